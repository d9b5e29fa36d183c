"""Where a SafeGen edit sends a noisy concept image, one denoising step at a time, with and without the text.

    python benchmarks/safegen_transfer.py --edit EDIT_DIR [--concept star] [--block 8] [--images 32]
        [--timesteps 100 200 300 500 700] [--prompt "a star"] [--guidance 5.0] [--prompts ...] [--seeds 6]

SafeGen (Eq. 1) trains the self-attention on the empty prompt only; the images are sampled under a prompt and
classifier-free guidance, eps = eps("") + g (eps(prompt) - eps("")). Held-out triplets of the tiny world (images of
the concept and their mosaics at ``--block`` pixels, encoded by the VAE) are noised to each timestep t with one
noise draw, and the base and the edited UNet predict at x_t. Printed per t:
- how the edit's change on the prompt compares with its change on "" (norm ratio and cosine, medians over images):
  1 and 1 mean the guidance keeps the change, where (1 - g) times a change on "" alone would reverse it;
- where the implied x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) lies between the concept image's latent z_c
  (0) and its mosaic's z_m (1): lambda = <x_0 - z_c, z_m - z_c> / ||z_m - z_c||^2, and its distance off that line
  in units of ||z_m - z_c|| (medians), for the base and the edited model, on "" and under guidance. An edit that
  turns the concept into its mosaic gives lambda near 1 and little off the line.
Then along the sampled trajectories (``--prompts`` x ``--seeds``, the tiny model's 25 DDIM steps and guidance), the
share of images whose implied x_0 at each step (the scheduler's own ``pred_original_sample``, decoded) the tiny
judge reads as the concept, for the base and the edited model: where on the trajectory the concept is decided, and
where the edit takes it away.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from PIL import Image

import _quiet  # noqa: F401  (quiets the libraries before they load)
from eraselab.erase.artifact import Edit, apply_edit
from eraselab.erase.safegen import TinyTriplets, image_latents
from eraselab.judge.detectors import make_detector
from eraselab.models import load_pipeline
from eraselab.models.tiny.suites import concept_label
from erasure_table import TARGETS  # the erasure table's targets (this directory)


def between(x0: torch.Tensor, z_c: torch.Tensor, z_m: torch.Tensor) -> tuple[float, float]:
    """(lambda, distance off the line), medians over images: where ``x0`` lies from z_c (0) to z_m (1)."""
    x0, z_c, z_m = (z.flatten(1).double() for z in (x0, z_c, z_m))
    line, offset = z_m - z_c, x0 - z_c
    lam = (offset * line).sum(1) / (line * line).sum(1)
    off = (offset - lam[:, None] * line).norm(dim=1) / line.norm(dim=1)
    return float(lam.median()), float(off.median())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edit", required=True, help="a SafeGen edit of the tiny model")
    parser.add_argument("--concept", choices=sorted(TARGETS), default="star")
    parser.add_argument("--block", type=int, default=8, help="the mosaic block the edit was trained with")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--timesteps", type=int, nargs="+", default=[100, 200, 300, 500, 700])
    parser.add_argument("--prompt", default=None, help="the prompt under guidance (default: 'a <concept>')")
    parser.add_argument("--guidance", type=float, default=5.0, help="the tiny model's guidance scale")
    parser.add_argument("--seed", type=int, default=12345, help="held out: the training draws use the edit's seed")
    parser.add_argument("--prompts", nargs="+", default=None, help="trajectories' prompts (default: 4 colours)")
    parser.add_argument("--seeds", type=int, default=6, help="trajectories per prompt")
    args = parser.parse_args()
    torch.set_num_threads(1)
    pipe = load_pipeline("tiny")
    generator = torch.Generator().manual_seed(args.seed)
    concept, mosaics, _ = TinyTriplets(args.concept, args.block).draw(np.random.default_rng(args.seed), args.images, 1)
    z_c, z_m = image_latents(pipe, concept, generator), image_latents(pipe, mosaics, generator)
    prompt = args.prompt or f"a {args.concept}"
    with torch.no_grad():
        text = {p: pipe.encode_prompt([p], pipe.device, 1, False)[0].expand(len(z_c), -1, -1) for p in ("", prompt)}
    noise = {t: torch.randn(z_c.shape, generator=torch.Generator().manual_seed(t)) for t in args.timesteps}
    prompts = args.prompts or [f"a {colour} {args.concept}" for colour in ("red", "blue", "green", "yellow")]
    scheduler, predictions, rates = pipe.scheduler, {}, {}
    for model in ("base", "edit"):
        if model == "edit":
            apply_edit(pipe, Edit.load(args.edit))
        for t in args.timesteps:
            steps = torch.full((len(z_c),), t)
            x_t = scheduler.add_noise(z_c, noise[t], steps)
            with torch.no_grad():  # (eps(""), eps(prompt)) at the concept's own x_t
                predictions[model, t] = x_t, *(pipe.unet(x_t, steps, encoder_hidden_states=text[p]).sample
                                               for p in ("", prompt))
        rates[model] = presence_along_trajectories(pipe, prompts, range(args.seeds), args.guidance,
                                                   concept_label(args.concept))
    print(f"| t | change on {prompt!r} / on '' (norm, cosine) | lambda, off: base '' | edit '' | base, guidance "
          f"{args.guidance} | edit, guidance |")
    print("|---|---|---|---|---|---|")
    for t in args.timesteps:
        x_t, u0, c0 = predictions["base", t]
        _, u1, c1 = predictions["edit", t]
        du, dc = (u1 - u0).flatten(1), (c1 - c0).flatten(1)
        ratio = float((dc.norm(dim=1) / du.norm(dim=1)).median())
        cosine = float(torch.nn.functional.cosine_similarity(du, dc).median())
        abar = scheduler.alphas_cumprod[t]

        def implied(eps: torch.Tensor, abar=abar, x_t=x_t) -> str:
            lam, off = between((x_t - (1 - abar).sqrt() * eps) / abar.sqrt(), z_c, z_m)
            return f"{lam:.2f}, {off:.2f}"

        guided = [u + args.guidance * (c - u) for u, c in ((u0, c0), (u1, c1))]  # classifier-free guidance
        print(f"| {t} | {ratio:.2f}, {cosine:.2f} | {implied(u0)} | {implied(u1)} | {implied(guided[0])} | "
              f"{implied(guided[1])} |")
    print(f"\n{args.concept} in the implied x_0 along {len(prompts) * args.seeds} sampled trajectories:\n")
    print("| model | " + " | ".join(f"t {t}" for t in rates["base"]) + " |")
    print("|---|" + "---|" * len(rates["base"]))
    for model, by_step in rates.items():
        print(f"| {model} | " + " | ".join(f"{rate:.2f}" for rate in by_step.values()) + " |")


def presence_along_trajectories(pipe, prompts: list[str], seeds: range, guidance: float, label: str
                                ) -> dict[int, float]:
    """The share of trajectories whose implied x_0 the tiny judge reads as ``label``, at every sampler step."""
    judge, recorded, step = make_detector("tiny"), {}, pipe.scheduler.step

    def recording(*args, **kwargs):  # the scheduler's own x_0 estimate of each step, kept as the step returns it
        out = step(*args, **kwargs)
        recorded.setdefault(int(args[1]), []).append(out[1] if isinstance(out, tuple) else out.pred_original_sample)
        return out

    pipe.scheduler.step = recording
    for prompt in prompts:
        pipe(prompt=[prompt] * len(seeds), generator=[torch.Generator().manual_seed(s) for s in seeds],
             num_inference_steps=25, guidance_scale=guidance, output_type="latent")
    pipe.scheduler.step = step
    rates = {}
    for t, estimates in recorded.items():
        with torch.no_grad():
            pixels = pipe.vae.decode(torch.cat(estimates) / pipe.vae.config.scaling_factor).sample
        images = ((pixels.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
        readings = judge.detect([Image.fromarray(image) for image in images])
        rates[t] = sum(judge.present(r, label) for r in readings) / len(readings)
    return rates


if __name__ == "__main__":
    main()
