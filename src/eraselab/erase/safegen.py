"""SafeGen: "SafeGen: Mitigating Sexually Explicit Content Generation in Text-to-Image Models" (Li, Yang, Deng, Yan,
Chen, Ji, Xu; ACM CCS 2024).

SafeGen is text-agnostic: it fine-tunes only the UNet's **self-attention** layers (every ``attn1`` q/k/v/out; text
encoder, VAE and cross-attention frozen), always conditioned on the empty prompt, so that the *visual*
representation of the concept is replaced by a mosaic whatever the text asks for. It learns from image triplets
(concept image x_c, the same image with the concept's region pixelated x_m, a benign image x_b), through their VAE
latents z_c, z_m, z_b (Sec. 4.2, and the official training script):
    L = w_m || eps_theta(z_c,t | t, "") - (eps + z_c - z_m) ||^2  +  w_p || eps_theta(z_b,t | t, "") - eps_b ||^2,
where z_c,t = sqrt(abar_t) z_c + sqrt(1 - abar_t) eps (the concept image and its mosaic share eps), z_b,t has its
own eps_b, and t is uniform. The first term asks the denoiser, given a noisy concept image, to predict the noise
that would leave the mosaic (the official script's constant offset z_c - z_m); ``target = "x0"`` uses the exact
offset instead: the prediction whose implied x_0 is z_m, eps + sqrt(abar_t / (1 - abar_t)) (z_c - z_m). The
second term keeps benign images as they were. On v-prediction models the targets are velocities (the script's
``get_velocity(z_c - z_m, eps, t)``; with ``x0``, the velocity whose implied x_0 is z_m).

Data: on the tiny model the world draws the triplets itself (it knows each shape's region): images of the erased
class with any other attributes, the same images with the shape's bounding box pixelated into
``mosaic_block``-pixel squares, and images of the other classes of the same attribute. For real models a CSV of
triplets (``triplets``: columns ``concept``, ``mosaic``, ``benign``, image paths). On SDXL (not in the paper,
which edits SD 1.4) the empty prompt's condition carries its pooled embedding and the time ids ``pipe("")`` uses.

Defaults (SD 1.4, the official ``run_adjust_SD.sh``): w_m 0.1, w_p 0.9, AdamW lr 1e-5, weight decay 1e-2 (the
script's default), 1,000 optimisation steps of batch 1 with 5-step gradient accumulation, gradient clipping at 1.0,
EMA of the weights (diffusers' EMAModel: decay 0.9999 with its (1 + s) / (10 + s) warm-up), t uniform over all
timesteps, one benign image per concept image. Tiny defaults (``tiny_overrides``), the best of what was measured
(``docs/tiny-measurements.md``), and still short of erasing the star without the other shapes: 600 steps of 8
triplets with 3 benign images each, AdamW lr 3e-3, w_m = w_p = 0.5, the exact x0 target, t over the lowest-noise 30%
of the timesteps (``mosaic_steps``: the shape is only visible in x_t there), no EMA. ``trainable = "unet"`` trains
every UNet weight instead of the self-attention: an ablation, not the paper's, which asks whether self-attention's
capacity is what limits the erasure (on tiny it is not: ``docs/tiny-measurements.md``).
"""

from __future__ import annotations

import csv
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from PIL import Image

from eraselab.erase.artifact import Edit
from eraselab.erase.finetune import FineTune, LoopSettings, copy_for_training, frozen_weights
from eraselab.erase.registry import MethodEntry
from eraselab.erase.spec import EraseSpec
from eraselab.errors import EraselabError
from eraselab.models import pipeline_fingerprint
from eraselab.models.conditioning import guidance_conditions
from eraselab.profile import profile_of
from eraselab.sampling import prediction_target

TARGETS = ("offset", "x0")
TRAINABLE = ("attn1", "unet")  # the paper's self-attention; every UNet weight (an ablation, not the paper's)


@dataclass(frozen=True)
class SafeGenConfig:
    iterations: int = 1000  # optimisation steps
    batch_size: int = 1
    accumulation: int = 5
    lr: float = 1e-5
    weight_decay: float = 1e-2
    weight_mosaic: float = 0.1  # w_m
    weight_preserve: float = 0.9  # w_p
    clip: float = 1.0
    ema_decay: float | None = 0.9999
    target: str = "offset"  # offset: the official script's eps + z_c - z_m; x0: the exact mosaic x_0
    triplets: str | None = None  # CSV of (concept, mosaic, benign) image paths; the tiny world draws its own
    mosaic_block: int = 8  # pixel size of the mosaic's squares (tiny world)
    benign_ratio: int = 1  # benign triplet images per concept image in a step (the script: 1)
    mosaic_steps: float = 1.0  # t uniform over this lowest-noise share of the timesteps (paper: 1, all of them)
    seed: int = 0
    trainable: str = "attn1"  # attn1: the paper's; unet: every UNet weight, to ask whether attn1 is what limits
    checkpoint: str | None = None
    checkpoint_every: int = 50

    tiny_overrides: ClassVar[dict] = {"iterations": 600, "batch_size": 8, "accumulation": 1, "lr": 3e-3,
                                      "ema_decay": None, "weight_mosaic": 0.5, "weight_preserve": 0.5,
                                      "target": "x0", "mosaic_steps": 0.3, "benign_ratio": 3}

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise EraselabError(f"safegen target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        if self.trainable not in TRAINABLE:
            raise EraselabError(f"safegen trainable must be one of {', '.join(TRAINABLE)}, got {self.trainable!r}")
        if self.weight_mosaic < 0 or self.weight_preserve < 0 or self.mosaic_block < 1 or self.batch_size < 1:
            raise EraselabError("safegen's weights must be >= 0, and mosaic_block and batch_size >= 1")
        if self.benign_ratio < 1 or not 0 < self.mosaic_steps <= 1:
            raise EraselabError("safegen's benign_ratio must be >= 1 and mosaic_steps in (0, 1]")

    def loop(self) -> LoopSettings:
        return LoopSettings(iterations=self.iterations, lr=self.lr, seed=self.seed, optimizer="adamw",
                            weight_decay=self.weight_decay, accumulation=self.accumulation, clip=self.clip,
                            ema_decay=self.ema_decay, checkpoint=self.checkpoint,
                            checkpoint_every=self.checkpoint_every)


def self_attention_parameters(unet) -> list[str]:
    """Every parameter of every self-attention layer (``attn1``: to_q, to_k, to_v, to_out) of the UNet."""
    names = [name for name, _ in unet.named_parameters() if ".attn1." in name]
    if not names:
        raise EraselabError("this UNet has no self-attention (attn1) layers for SafeGen to train")
    return names


def mosaic(image: np.ndarray, region: np.ndarray, block: int) -> np.ndarray:
    """``image`` (H, W, 3) with the pixels of ``region`` (H, W, bool) pixelated: the region's bounding box cut into
    ``block``-pixel squares from its top-left corner, each square's region pixels set to their mean colour."""
    out = image.astype(np.float64)
    ys, xs = np.nonzero(region)
    if len(ys):
        for y in range(ys.min(), ys.max() + 1, block):
            for x in range(xs.min(), xs.max() + 1, block):
                inside, cell = region[y:y + block, x:x + block], out[y:y + block, x:x + block]
                if inside.any():
                    cell[inside] = cell[inside].mean(axis=0)
    return np.round(out).astype(np.uint8)


def box_region(shape: tuple[int, ...], boxes) -> np.ndarray:
    """The (H, W) mask of the union of ``boxes`` (top, left, bottom, right) in an image of ``shape``."""
    region = np.zeros(shape[:2], dtype=bool)
    for top, left, bottom, right in boxes:
        region[top:bottom, left:right] = True
    return region


def _region(image: np.ndarray) -> tuple[int, int, int, int]:
    """The bounding box of what is drawn on the tiny world's uniform background (the corner pixel's colour)."""
    drawn = np.abs(image.astype(np.int16) - image[0, 0].astype(np.int16)).sum(-1) > 24
    if not drawn.any():
        return 0, 0, *image.shape[:2]
    ys, xs = np.nonzero(drawn)
    return int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1


class TinyTriplets:
    """Triplets the tiny world draws: the erased class (``attribute=value``), its mosaic, another class."""

    def __init__(self, concept: str, block: int) -> None:
        from eraselab.models.tiny.suites import concept_label
        from eraselab.models.tiny.world import load_world

        self.world, self.block = load_world(), block
        attribute, value = concept_label(concept).split("=")
        self.attribute, self.index = attribute, self.world.classes[attribute].index(value)

    def draw(self, rng: np.random.Generator, n: int, n_benign: int
             ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        concept, mosaics, benign = [], [], []
        others = [i for i in range(len(self.world.classes[self.attribute])) if i != self.index]
        for _ in range(n):
            attributes = self.world.attributes_of(self.world.sample_attributes(rng, 1), 0)
            image = self.world.draw_one({**attributes, self.attribute: self.index}, rng)
            concept.append(image)
            mosaics.append(mosaic(image, box_region(image.shape, [_region(image)]), self.block))
        for _ in range(n_benign):
            attributes = self.world.attributes_of(self.world.sample_attributes(rng, 1), 0)
            benign.append(self.world.draw_one({**attributes, self.attribute: int(rng.choice(others))}, rng))
        return concept, mosaics, benign


def open_rgb(path: Path, what: str) -> Image.Image:
    """The image at ``path`` in RGB, read whole; an unreadable file is one line naming ``what`` read it."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as error:
        raise EraselabError(f"{what}: cannot read {path}: {error}") from None


class CsvTriplets:
    """Triplets listed in a CSV (``concept``, ``mosaic``, ``benign`` image paths, relative to the CSV)."""

    def __init__(self, path: str, size: int) -> None:
        file = Path(path)
        if not file.is_file():
            raise EraselabError(f"safegen triplets: {file} does not exist")
        with file.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        missing = {"concept", "mosaic", "benign"} - set(rows[0] if rows else {})
        if not rows or missing:
            raise EraselabError(f"safegen triplets: {file} needs rows with columns concept, mosaic, benign")
        self.rows = [{k: file.parent / row[k] for k in ("concept", "mosaic", "benign")} for row in rows]
        self.size = size

    def _load(self, path: Path) -> np.ndarray:
        return np.asarray(open_rgb(path, "safegen triplets").resize((self.size, self.size), Image.Resampling.BICUBIC))

    def draw(self, rng: np.random.Generator, n: int, n_benign: int
             ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        rows = [self.rows[int(i)] for i in rng.integers(len(self.rows), size=n)]
        extra = [self.rows[int(i)] for i in rng.integers(len(self.rows), size=n_benign - n)]
        concept, mosaics = ([self._load(row[k]) for row in rows] for k in ("concept", "mosaic"))
        return concept, mosaics, [self._load(row["benign"]) for row in rows + extra]


def mosaic_target(scheduler, x_t: torch.Tensor, eps: torch.Tensor, z_c: torch.Tensor, z_m: torch.Tensor,
                  t: torch.Tensor, target: str) -> torch.Tensor:
    """What the UNet should predict at ``x_t`` (the noisy concept latent) so that the concept turns into its
    mosaic: the official constant offset eps + z_c - z_m (``offset``; on v-prediction the velocity of z_c - z_m, as
    the script computes it), or the exact prediction whose implied x_0 is z_m (``x0``)."""
    velocity = scheduler.config.get("prediction_type", "epsilon") == "v_prediction"
    if target == "offset":
        return scheduler.get_velocity(z_c - z_m, eps, t) if velocity else eps + z_c - z_m  # Sec. 4.2's target
    a = scheduler.alphas_cumprod.to(x_t.device)[t].view(-1, 1, 1, 1).to(x_t.dtype)
    if velocity:  # x_0 = sqrt(a) x_t - sqrt(1 - a) v  ->  v = (sqrt(a) x_t - z_m) / sqrt(1 - a)
        return (a.sqrt() * x_t - z_m) / (1 - a).sqrt()
    return (x_t - a.sqrt() * z_m) / (1 - a).sqrt()  # x_0 = (x_t - sqrt(1 - a) eps) / sqrt(a)  ->  solve for eps


def image_latents(pipe, images: list[np.ndarray], generator: torch.Generator) -> torch.Tensor:
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        dist = pipe.vae.encode(pixels.to(pipe.device, pipe.vae.dtype)).latent_dist
        noise = torch.randn(dist.mean.shape, generator=generator).to(dist.mean.device, dist.mean.dtype)
        return (dist.mean + dist.std * noise) * pipe.vae.config.scaling_factor  # a draw, as the script samples


def erase(pipe, spec: EraseSpec, config: SafeGenConfig, progress: bool = True,
          stop_after: int | None = None) -> Edit | None:
    """Fine-tune the self-attention of a copy of ``pipe.unet`` (``pipe`` is not changed); ``stop_after`` as ESD's."""
    start = time.perf_counter()
    if len(spec.concepts) != 1:
        raise EraselabError("safegen erases one concept per run (its triplets show one); got "
                            f"{len(spec.concepts)}")
    if config.triplets:
        source = CsvTriplets(config.triplets, pipe.unet.config.sample_size * pipe.vae_scale_factor)
    elif profile_of(pipe).tiny:
        source = TinyTriplets(spec.concepts[0], config.mosaic_block)
    else:
        raise EraselabError("safegen needs image triplets on this model: set triplets to a CSV of concept, "
                            "mosaic and benign image paths")
    with frozen_weights(pipe.unet) as frozen:
        return _train(pipe, frozen, source, spec, config, start, progress, stop_after)


def _train(pipe, frozen, source, spec: EraseSpec, config: SafeGenConfig, start: float, progress: bool,
           stop_after: int | None) -> Edit | None:
    trainable = (self_attention_parameters(frozen) if config.trainable == "attn1" else
                 [name for name, _ in frozen.named_parameters()])
    unet = copy_for_training(frozen, trainable)  # shares every weight it does not train with the frozen UNet
    identity = {"safegen": asdict(config) | {"checkpoint": None}, "spec": asdict(spec),
                "base": pipeline_fingerprint(pipe)}
    loop = FineTune(unet, trainable, config.loop(), identity, "SafeGen", original=frozen)
    scheduler = pipe.scheduler
    empty = guidance_conditions(pipe, [""])[0]  # the only condition SafeGen ever sees (SDXL: with its pooled text)

    def step(_: int, g: torch.Generator) -> torch.Tensor:
        rng = np.random.default_rng(int(torch.randint(2**31 - 1, (1,), generator=g)))
        concept, mosaics, benign = source.draw(rng, config.batch_size, config.batch_size * config.benign_ratio)
        z_c, z_m, z_b = (image_latents(pipe, images, g) for images in (concept, mosaics, benign))
        eps, eps_b = torch.randn(z_c.shape, generator=g), torch.randn(z_b.shape, generator=g)
        eps, eps_b = eps.to(z_c.device, z_c.dtype), eps_b.to(z_c.device, z_c.dtype)
        steps = scheduler.config.num_train_timesteps
        t = torch.randint(max(1, round(steps * config.mosaic_steps)), (len(z_c),), generator=g).to(z_c.device)
        t_b = t.repeat(config.benign_ratio)  # as the script: the benign term at the concept's timesteps
        x_t = scheduler.add_noise(z_c, eps, t)  # z_c,t; its mosaic shares eps
        goal = mosaic_target(scheduler, x_t, eps, z_c, z_m, t, config.target)
        keep = prediction_target(scheduler, z_b, eps_b, t_b)
        noisy = torch.cat([x_t, scheduler.add_noise(z_b, eps_b, t_b)])  # one batched call for both terms
        prediction = unet(noisy, torch.cat([t, t_b]), **empty.expand(len(noisy)).unet_kwargs()).sample
        mosaic_loss = torch.nn.functional.mse_loss(prediction[:len(z_c)], goal)
        preserve_loss = torch.nn.functional.mse_loss(prediction[len(z_c):], keep)
        return config.weight_mosaic * mosaic_loss + config.weight_preserve * preserve_loss  # the SafeGen loss

    trained = loop.run(step, progress, stop_after)
    if trained is None:
        return None
    manifest = {"method": "safegen", "config": asdict(config), "concepts": list(spec.concepts), "anchors": [],
                "preserve": list(spec.preserve), "templates": list(spec.templates),
                "base_fingerprint": pipeline_fingerprint(pipe), "seed": config.seed, "final_loss": loop.last_loss,
                "seconds": round(time.perf_counter() - start, 3)}
    return Edit({f"unet.{n}": tensor for n, tensor in trained.items()}, manifest)


METHOD = MethodEntry(erase, SafeGenConfig)
