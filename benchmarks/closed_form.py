"""The batched closed-form solver vs. a per-layer, per-concept loop (the reference scripts' way), same edit.

    python benchmarks/closed_form.py

Two cases, both timed in this run: the tiny model's UCE edit of "star" (14 projections), and SD-1.x-sized
projections (32 = 16 layers x to_k/to_v, widths 320/640/1280, text width 768) with 50 keys and 100 preserved
embeddings. The loop builds each layer's sums of outer products one key at a time and inverts each layer's
right factor, as the reference erasing script does; both give the same weights (checked here).

Then memory at SDXL's size: its largest group of one shape (120 projections of 1280 x 2048), solved in calls of
``chunk`` layers (the default) and in one call, each in a fresh process (peak resident memory above the float64
weights it starts from), and whether the weights are bit-identical.
"""

from __future__ import annotations

import hashlib
import inspect
import multiprocessing
import resource
import time

import torch

import _quiet  # noqa: F401  (quiets the libraries before they load)
from eraselab.erase.closed_form import closed_form_edit


def loop(weights, keys, targets, preserve, s_p, lamb):
    out = []
    for layer in range(weights.shape[0]):
        w0 = weights[layer].double()
        left, right = lamb * w0.clone(), lamb * torch.eye(w0.shape[1], dtype=torch.float64)
        for i in range(keys.shape[0]):
            left += torch.outer(targets[layer][:, i].double(), keys[i].double())
            right += torch.outer(keys[i].double(), keys[i].double())
        for p in preserve.double():
            left += s_p * torch.outer(w0 @ p, p)
            right += s_p * torch.outer(p, p)
        out.append(left @ torch.inverse(right))
    return torch.stack(out)


def case(name: str, groups: list[torch.Tensor], keys, targets_of, preserve, repeats: int = 3) -> None:
    timings = {"batched": [], "loop": []}
    for _ in range(repeats):
        start = time.perf_counter()
        batched = [closed_form_edit(w, keys, targets_of(w), preserve, 0.1, lamb=0.1) for w in groups]
        timings["batched"].append(time.perf_counter() - start)
        start = time.perf_counter()
        looped = [loop(w, keys, targets_of(w), preserve, 0.1, 0.1) for w in groups]
        timings["loop"].append(time.perf_counter() - start)
    same = all(torch.allclose(a.double(), b, atol=1e-6) for a, b in zip(batched, looped, strict=True))
    fast, slow = min(timings["batched"]), min(timings["loop"])
    print(f"{name:34s} batched {fast * 1000:8.1f} ms   loop {slow * 1000:8.1f} ms   speed-up {slow / fast:6.1f}x   "
          f"same weights: {same}")


def sdxl_solve(chunk: int | None) -> tuple[float, float, str]:
    """In a fresh process: peak memory (GB) above the inputs, seconds, and a digest of the weights of one
    SDXL-sized solve (a digest: a tensor sent back between processes goes through shared memory)."""
    torch.manual_seed(0)
    w0 = (torch.randn(120, 1280, 2048) * 0.02).double()
    keys, anchors, preserve = torch.randn(21, 2048), torch.randn(21, 2048), torch.randn(40, 2048)
    targets = w0 @ anchors.double().T
    before, start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter()
    edited = closed_form_edit(w0, keys, targets, preserve, 0.5, lamb=0.1, chunk=chunk or len(w0))
    seconds = time.perf_counter() - start
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 2**20  # kB -> GB
    return peak, seconds, hashlib.sha256(edited.numpy().tobytes()).hexdigest()


def sdxl_memory() -> None:
    default = inspect.signature(closed_form_edit).parameters["chunk"].default
    with multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        (chunked, t_chunked, a), (whole, t_whole, b) = pool.map(sdxl_solve, [default, None], chunksize=1)
    print(f"SDXL-sized solve (120 proj. 1280x2048): {default} layers a call {chunked:.2f} GB above the inputs, "
          f"{t_chunked:.1f} s; one call {whole:.2f} GB, {t_whole:.1f} s; bit-identical: {a == b}")


def main() -> None:
    from eraselab.erase.uce import UceConfig, aligned_rows
    from eraselab.models import cross_attention_layers, load_pipeline
    from eraselab.models.conditioning import encode
    from eraselab.models.tiny.world import load_world

    torch.manual_seed(0)
    pipe = load_pipeline("tiny")
    templates = load_world().erase_templates("star")
    keys, anchors = aligned_rows(encode(pipe, [t.format("star") for t in templates]),
                                 encode(pipe, [t.format("shape") for t in templates]), UceConfig().positions)
    weights: dict[tuple, list] = {}
    for layer in cross_attention_layers(pipe.unet):
        for projection in (layer.to_k, layer.to_v):
            weights.setdefault(tuple(projection.weight.shape), []).append(projection.weight.detach())
    groups = [torch.stack(ws) for ws in weights.values()]
    case(f"tiny UCE 'star' ({sum(len(g) for g in groups)} proj., {len(keys)} keys)", groups, keys,
         lambda w: w.double() @ anchors.T, torch.empty(0, keys.shape[1], dtype=torch.float64))

    sd_groups = [torch.randn(n, width, 768) * 0.02 for n, width in ((10, 320), (10, 640), (12, 1280))]
    sd_keys, sd_anchor, sd_preserve = torch.randn(50, 768), torch.randn(50, 768), torch.randn(100, 768)
    case("SD-1.x sized (32 proj., 50 keys)", sd_groups, sd_keys, lambda w: w.double() @ sd_anchor.double().T,
         sd_preserve, repeats=1)
    sdxl_memory()


if __name__ == "__main__":
    main()
