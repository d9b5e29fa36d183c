"""Where TRCE stage 2's triplet hinge (Eq. 7) is active before any training: at each early point x_t of the
malicious trajectories stage 2 trains on, d = ||a - f+||^2 - ||a - f-||^2 for its two anchors (the model's
prediction for the malicious prompt and for ""), with the stage-1 model as the anchor (stages 1+2) or the original
(stage 2 alone). Eq. 7's term max(0, d + margin) gives a gradient only where d > -margin.

    python benchmarks/trce_hinge.py [--concept star] [--anchor shape] [--margins 0.01 0.1 1] [--option KEY=VALUE ...]

With u = eps(mal) - eps("") and v = eps(safe) - eps(""), the "" anchor's d is (1 + g)^2 (||v||^2 - ||u||^2): the
hinge acts only where the safe prompt pulls harder than the malicious one, on the malicious prompt's own trajectory;
the script prints the median ratio ||v|| / ||u|| too (``--anchor`` tries another safe concept than the table's).
"""

from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F

import _quiet  # noqa: F401  (quiets the libraries before they load)
from eraselab.erase.cross_attention_edit import check_spec_words
from eraselab.erase.registry import ERASERS
from eraselab.erase.spec import EraseSpec
from eraselab.erase.trajectories import early_steps, trajectories
from eraselab.erase.trce import guided_targets, stage_one
from eraselab.models import load_pipeline
from eraselab.models.tiny.world import load_world
from eraselab.options import build, parse_key_values
from eraselab.profile import TINY
from erasure_table import TARGETS  # the erasure table's anchors (this directory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concept", choices=sorted(TARGETS), default="star")
    parser.add_argument("--anchor", default=None, help="the safe concept (default: the erasure table's)")
    parser.add_argument("--margins", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    parser.add_argument("--option", nargs="+", default=[], metavar="KEY=VALUE",
                        help="TRCE options over its tiny defaults (e.g. positions=first-eot: stage 1 as the paper)")
    args = parser.parse_args()
    pipe, config = load_pipeline("tiny"), build(ERASERS, "trce", parse_key_values(args.option, "--option"), TINY)
    anchor, name, attribute = TARGETS[args.concept]
    anchor = anchor if args.anchor is None else args.anchor
    spec = EraseSpec((args.concept,), (anchor,), tuple(load_world().siblings(attribute, name)),
                     TINY.erase_templates(args.concept))
    pairs = check_spec_words(pipe, spec)
    per, early = config.trajectories_per_pair, early_steps(config.sampler_steps, config.early_fraction)
    bad = trajectories(pipe, [m for m, _ in pairs for _ in range(per)], list(range(len(pairs) * per)),
                       config.sampler_steps, config.trajectory_guidance, early, None, False)
    original, stage1 = pipe.unet, copy.deepcopy(pipe.unet)
    with torch.no_grad():
        for key, tensor in stage_one(pipe, spec, config).items():
            stage1.get_parameter(key[len("unet."):]).copy_(tensor)
    text = {p: pipe.encode_prompt([p], pipe.device, 1, False)[0] for pair in pairs for p in (*pair, "")}
    d: dict[str, list[float]] = {k: [] for k in ("1+2, malicious", "1+2, empty", "2 alone, malicious",
                                                  "2 alone, empty")}
    g, ratios = config.guidance, []
    with torch.no_grad():
        for item in range(len(pairs) * per):
            mal, safe = pairs[item // per][0], pairs[item // per][1] or " "
            for k in range(early):
                x, t = bad.inputs[item, k][None], bad.timesteps[k]
                positive, negative = guided_targets(original, x, t, text[safe], text[mal], text[""], g)
                e_mal, e_empty = original(x.expand(2, -1, -1, -1), t, encoder_hidden_states=torch.cat(
                    [text[mal], text[""]])).sample.chunk(2)  # the anchors of stage 2 alone
                a_mal, a_empty = stage1(x.expand(2, -1, -1, -1), t, encoder_hidden_states=torch.cat(
                    [text[mal], text[""]])).sample.chunk(2)
                ratios.append((positive - e_empty).norm().item() / (1 + g) /
                              (e_mal - e_empty).norm().item())  # ||v|| / ||u||: f+ = eps("") + (1 + g) v
                for key, a in zip(d, (a_mal, a_empty, e_mal, e_empty), strict=True):
                    d[key].append((F.mse_loss(a, positive) - F.mse_loss(a, negative)).item())
    print(f"{args.concept} -> {anchor!r}: median ||v|| / ||u|| {torch.tensor(ratios).median():.3f}")
    print(f"{args.concept}: {len(pairs)} pairs x {per} trajectories x {early} early steps = "
          f"{len(pairs) * per * early} points; share of points where the hinge acts, by margin")
    print("| anchor | median d | " + " | ".join(f"margin {m:g}" for m in args.margins) + " |")
    print("|---|---|" + "---|" * len(args.margins))
    for key, values in d.items():
        v = torch.tensor(values)
        shares = " | ".join(f"{(v > -m).float().mean():.2f}" for m in args.margins)
        print(f"| {key} | {v.median():.3f} | {shares} |")


if __name__ == "__main__":
    main()
