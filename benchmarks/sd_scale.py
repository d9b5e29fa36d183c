"""Stable Diffusion at full size, from config with random weights (nothing is downloaded): what each operation costs.

    python benchmarks/sd_scale.py --bpe bpe_simple_vocab_16e6.txt.gz [--device cuda --dtype float16]
        [--parts sd14 esd-resume trce-stage2 safegen advunlearn sdxl sdxl-esd ring-a-bell] [--deterministic]

Builds SD-1.4's architecture (UNet 859.5 M, CLIP ViT-L/14 text encoder 123.1 M, VAE 83.7 M parameters; PNDM, the
scheduler SD-1.4 ships) with the real CLIP BPE vocabulary (``bpe_simple_vocab_16e6.txt.gz``, inside the
``open_clip_torch`` wheel: ``pip download --no-deps open_clip_torch`` and unzip it), saves it as a diffusers
directory and loads it back with eraselab's loader, then measures each operation in this process: wall time, CPU
time (all threads), and peak resident memory while it ran (peak GPU memory on CUDA):

- generation, eraselab ``generate_images`` vs. the plain diffusers pipeline on the same requests (the same pipeline
  object, one generator per image, alternating, median of ``--repeats`` for a lone image and ``--repeats-batch``
  for 8, each one call a side): batch 1 and batch 8 under the default policy (unpadded at this size), and a lone
  image under the fixed-shape policy (padded to 8 rows, one timing), as ratios of images per second;
- a UCE, RECE and TRCE (stage 1, with a caption corpus) edit;
- one ESD iteration (esd-x; x_t sampled with DDIM to the step the seed draws; on a float32 pipeline, as every
  trained eraser needs) and one UnlearnDiffAtk step;
- ``eraselab attack --steps 2`` (the runner, loading the model itself) for embedding recovery and the concept
  vector, and a Ring-A-Bell search generation (half the population's text encodings, 64 rows a call) with the
  projected cost of the paper's budget.

``--parts esd-resume`` trains ESD at SD-1.4 size under PNDM, DDIM and DPM-Solver pipelines, two iterations
whole and one + a resume, and prints the largest difference between the weights (0: bit-identical; on CUDA
only with ``--deterministic``). ``--parts trce-stage2`` times TRCE's second stage with the paper's settings (its
trajectories, then ``--trce-steps`` steps) and projects the whole run. ``--parts safegen`` times SafeGen's
optimisation steps with the official script's settings (5 accumulated 512-pixel triplets a step, EMA; one step, then
one resumed) and projects its 1,000 steps; ``--parts advunlearn`` times one AdvUnlearn warm-up iteration and one
with its inner attack (``--advunlearn-ddim-steps``, ``--advunlearn-attack-steps``: 50 and 30 as in the paper by
default), counting their UNet calls. ``--parts sdxl`` builds SDXL base's
architecture (UNet 2.57 G, two text encoders 123 M + 695 M): its load, a UCE edit on the 2048-wide context,
embedding recovery and a lone image's generation ratio; ``--parts sdxl-esd`` one ESD iteration on it (built for
512 px), one UnlearnDiffAtk step and one Ring-A-Bell generation through both its text encoders; ``--parts
ring-a-bell`` one Ring-A-Bell generation (population 200) through SDXL's two full-size text encoders (a micro UNet
beside them: the search never calls it) in calls of ``encode_batch`` rows against the whole population in one call,
as ratios of wall time and of peak memory above the loaded encoders. Random weights:
the costs are real, the images are noise.
The attacks' judge is the tiny classifier pointed at a colour the unedited model draws, so there is something to
bring back.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch

import _quiet  # noqa: F401  (quiets the libraries before they load)
from eraselab.batching import Batching
from eraselab.generate import generate_images
from eraselab.models.vocabulary import clip_tokenizer
from eraselab.requests import GenerationRequest

PROMPTS = ["a photo of a cat on a sofa", "a painting of a lighthouse at night", "a portrait of an old man",
           "a bowl of fruit on a table", "a city street in the rain", "a mountain lake at sunrise",
           "a dog running on the beach", "a red car in front of a house"]


def vae(sample_size: int):
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2,
                         sample_size=sample_size)


def text_config(tokenizer, width: int, layers: int, heads: int, act: str):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=4 * width,
                          num_attention_heads=heads, num_hidden_layers=layers, max_position_embeddings=77,
                          hidden_act=act, projection_dim=width, bos_token_id=0, eos_token_id=2,
                          pad_token_id=1)  # the legacy ids SD-1.4's and SDXL's text-encoder configs carry


def build_sd14(tokenizer):
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)  # SD-1.x defaults
    encoder = CLIPTextModel(text_config(tokenizer, 768, 12, 12, "quick_gelu"))  # ViT-L/14's text tower
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                              steps_offset=1, set_alpha_to_one=False)
    return StableDiffusionPipeline(vae=vae(512), text_encoder=encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def sdxl_text_side(tokenizer) -> dict:
    """SDXL base's two text encoders (CLIP ViT-L, OpenCLIP bigG) and tokenizers, as pipeline components."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    second_tokenizer = copy.deepcopy(tokenizer)
    second_tokenizer.pad_token = "!"  # SDXL base's second tokenizer pads with "!", not the end token
    return {"text_encoder": CLIPTextModel(text_config(tokenizer, 768, 12, 12, "quick_gelu")), "tokenizer": tokenizer,
            "text_encoder_2": CLIPTextModelWithProjection(text_config(tokenizer, 1280, 32, 20, "gelu")),
            "tokenizer_2": second_tokenizer}


def build_sdxl(tokenizer, sample_size: int = 128):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    unet = UNet2DConditionModel(
        sample_size=sample_size, block_out_channels=(320, 640, 1280), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    return StableDiffusionXLPipeline(vae=vae(1024), unet=unet, scheduler=scheduler, **sdxl_text_side(tokenizer))


class Meter:
    """Wall time, CPU time and peak memory of each measured operation, printed as it finishes."""

    def __init__(self, device: str) -> None:
        self.device, self.rows = device, []

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as statm:  # resident pages; psutil is not a dependency
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    @contextmanager
    def measure(self, name: str, **info):
        peak, done = [self._rss()], threading.Event()

        def sample() -> None:
            while not done.wait(0.02):
                peak[0] = max(peak[0], self._rss())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield info
        finally:
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            done.set()
            sampler.join()
            row = {"operation": name, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                   "peak_rss_gb": round(peak[0] / 2**30, 2), **info}
            if self.device.startswith("cuda"):
                row["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            self.rows.append(row)
            print(json.dumps(row), flush=True)


def plain_diffusers(pipe, requests: list[GenerationRequest]) -> list:
    first, generators = requests[0], [torch.Generator().manual_seed(r.seed) for r in requests]
    return pipe(prompt=[r.prompt for r in requests], generator=generators,
                num_inference_steps=first.steps, guidance_scale=first.guidance, height=first.height, width=first.width,
                output_type="pil").images


def throughput(meter: Meter, pipe, name: str, requests: list[GenerationRequest], batching: Batching,
               repeats: int) -> None:
    """eraselab / plain diffusers images per second on ``requests`` (one call each side), median of ``repeats``."""
    times: dict[str, list[float]] = {"eraselab": [], "diffusers": []}
    with meter.measure(name, images=len(requests), policy="fixed" if batching.resolved(pipe).fixed_shape
                       else "unpadded") as info:
        for _ in range(repeats):
            for side in times:
                start = time.perf_counter()
                if side == "eraselab":
                    generate_images(pipe, requests, batching, progress=False)
                else:
                    plain_diffusers(pipe, requests)
                times[side].append(time.perf_counter() - start)
        ours, theirs = statistics.median(times["eraselab"]), statistics.median(times["diffusers"])
        info.update(eraselab_s=round(ours, 2), diffusers_s=round(theirs, 2), ratio=round(theirs / ours, 3))


def label_seen(pipe, prompt: str, steps: int) -> str:
    """A colour the tiny judge sees in the unedited model's image of ``prompt``: what the attacks bring back."""
    from eraselab.judge.detectors import make_detector

    image = generate_images(pipe, [GenerationRequest(prompt, 0, steps, 7.5)], progress=False)
    return f"color={make_detector('tiny').detect(image)[0]['color']}"


def closed_form_edits(meter: Meter, pipe, workdir: Path, prefix: str, methods=("uce", "rece", "trce")) -> Path:
    from eraselab.erase.registry import ERASERS
    from eraselab.erase.spec import EraseSpec
    from eraselab.options import build

    corpus = workdir / "captions.txt"  # 120 distinct captions (the TRCE paper uses COCO's; here only the cost counts)
    subjects = ("a cat", "a dog", "an old man", "a child", "a red car", "a bowl of fruit", "a lighthouse", "a horse",
                "a castle", "a bicycle")
    scenes = ("on a beach", "in a forest", "in the city at night", "in a kitchen", "under the snow", "in a field")
    corpus.write_text("\n".join(f"{style} of {s} {w}" for s in subjects for w in scenes
                                for style in ("a photo", "a drawing")) + "\n")
    spec = EraseSpec(("van gogh",), ("art",), templates=("a painting by {}", "art by {}", "{}"))
    for method in methods:
        config = build(ERASERS, method, {"corpus": str(corpus), "stages": "1"} if method == "trce" else {})
        with meter.measure(f"{prefix} {method} edit") as info:
            edit = ERASERS.get(method).erase(pipe, spec, config)
            info["tensors"] = len(edit.tensors)
        if method == "uce":
            edit.save(workdir / f"{prefix}-uce")
    return workdir / f"{prefix}-uce"


def attack_cli(meter: Meter, model: Path, edit: Path, attack: str, label: str, workdir: Path, args) -> None:
    from eraselab.attack import ATTACKS
    from eraselab.attack.runner import run_attack

    suite = workdir / "suite.csv"
    suite.write_text("prompt\n" + "\n".join(PROMPTS[:2]) + "\n")
    config_cls = ATTACKS.get(attack).config
    with meter.measure(f"attack {attack} --steps 2", prompts=2, seeds=1) as info:
        record = run_attack(attack, config_cls(), "van gogh", str(suite), workdir / f"attack-{attack}",
                            model=str(model), edits=(edit,) if edit else (), seeds=1, judge="tiny", label=label,
                            steps=2, device=args.device, dtype=args.dtype)
        info["unet_evals_in_attack"] = record["cost"]["unet_evals"]


def sd14_pipeline(meter: Meter, args, tokenizer, workdir: Path, dtype: str | None = None):
    """SD-1.4's architecture, built and saved once per work directory, loaded with eraselab's loader (in
    ``dtype``, else ``--dtype``)."""
    from eraselab.models import load_pipeline

    if not (workdir / "sd14" / "model_index.json").exists():
        with meter.measure("sd-1.4 build from config + save"):
            torch.manual_seed(0)
            built = build_sd14(tokenizer)
            counts = {name: round(sum(p.numel() for p in getattr(built, name).parameters()) / 1e6, 1)
                      for name in ("unet", "text_encoder", "vae")}
            built.save_pretrained(workdir / "sd14", safe_serialization=True)
            del built
        print(json.dumps({"sd-1.4 parameters (M)": counts}), flush=True)
    with meter.measure(f"sd-1.4 load_pipeline ({dtype or args.dtype})"):
        return load_pipeline(workdir / "sd14", device=args.device, dtype=dtype or args.dtype)


def sd14(meter: Meter, args, tokenizer, workdir: Path) -> None:
    pipe = sd14_pipeline(meter, args, tokenizer, workdir)
    size = {"height": args.size, "width": args.size}
    one = [GenerationRequest(PROMPTS[0], 0, args.steps, 7.5, **size)]
    eight = [GenerationRequest(p, i, args.steps, 7.5, **size) for i, p in enumerate(PROMPTS)]
    generate_images(pipe, one, Batching(1), progress=False)  # warm-up: lazy initialisation
    throughput(meter, pipe, f"sd-1.4 generate batch 1 ({args.size} px, {args.steps} steps)", one, Batching(1),
               args.repeats)
    throughput(meter, pipe, f"sd-1.4 generate batch 8 ({args.size} px, {args.steps} steps)", eight, Batching(8),
               args.repeats_batch)
    throughput(meter, pipe, f"sd-1.4 generate 1 image padded to 8 rows ({args.size} px, {args.steps} steps)", one,
               Batching(8, fixed_shape=True), 1)
    edit = closed_form_edits(meter, pipe, workdir, "sd-1.4")
    unlearndiff_step(meter, pipe, args)
    ring_a_bell(meter, pipe)
    label = label_seen(pipe, PROMPTS[0], 2)
    del pipe
    esd_iteration(meter, args, tokenizer, workdir)
    for attack in ("embedding-recovery", "concept-vector"):
        attack_cli(meter, workdir / "sd14", edit, attack, label, workdir, args)


def esd_iteration(meter: Meter, args, tokenizer, workdir: Path) -> None:
    """One ESD iteration on a float32 pipeline: the trained erasers refuse 16-bit weights (updates round away)."""
    from eraselab.erase.esd import EsdConfig

    pipe = sd14_pipeline(meter, args, tokenizer, workdir, "float32")
    one_esd_iteration(meter, pipe, "sd-1.4 one ESD iteration (esd-x, float32)", EsdConfig(iterations=1))


def one_esd_iteration(meter: Meter, pipe, name: str, config) -> None:
    """Time one ESD iteration of ``config`` (esd-x) on ``pipe``, counting the frozen UNet's calls (x_t sampling to the
    seed's step, then the targets) and the weights it trains."""
    from eraselab.erase.esd import erase as esd
    from eraselab.erase.esd import trained_parameter_names
    from eraselab.erase.spec import EraseSpec

    calls = []
    hook = pipe.unet.register_forward_hook(lambda *_: calls.append(1))
    with meter.measure(name) as info:
        esd(pipe, EraseSpec(("van gogh",)), config, progress=False)
        hook.remove()
        info["frozen_unet_calls"] = len(calls)
        info["trained_parameters_m"] = round(sum(pipe.unet.get_parameter(n).numel()
                                                 for n in trained_parameter_names(pipe.unet, config.variant)) / 1e6, 1)


def trce_stage_two(meter: Meter, args, tokenizer, workdir: Path) -> None:
    """TRCE stage 2 with the paper's settings (float32) but 5 unconditional trajectories where the official loop
    reads 400 (sampling them is 80 times this run's unconditional sampling, on a GPU minutes): the trajectories (5
    per pair, 50 steps, early half; the unconditional ones whole), then ``--trce-steps`` of its optimisation steps,
    with the whole run projected from them."""
    from eraselab.erase.registry import ERASERS
    from eraselab.erase.spec import EraseSpec
    from eraselab.options import build

    pipe = sd14_pipeline(meter, args, tokenizer, workdir, "float32")
    spec = EraseSpec(("van gogh",), ("art",), templates=("a painting by {}", "art by {}", "{}"))  # 3 pairs
    config = build(ERASERS, "trce", {"stages": "2", "unconditional_trajectories": 5,
                                     "checkpoint": str(workdir / "trce2")})
    erase, pairs = ERASERS.get("trce").erase, len(spec.templates)
    with meter.measure("sd-1.4 TRCE stage 2: trajectories + 1 step") as info:
        erase(pipe, spec, config, progress=False, stop_after=1)
        info["trajectories"] = pairs * config.trajectories_per_pair + config.unconditional_trajectories
    total = config.epochs * pairs * config.trajectories_per_pair
    steps = max(1, min(args.trce_steps, total - 1))
    with meter.measure(f"sd-1.4 TRCE stage 2: {steps} more of {total} steps") as info:
        start = time.perf_counter()
        erase(pipe, spec, config, progress=False, stop_after=1 + steps)  # resumes after the first step
        info["projected_training_s"] = round((time.perf_counter() - start) / steps * total, 1)


def safegen_steps(meter: Meter, args, tokenizer, workdir: Path) -> None:
    """SafeGen with the official script's settings (float32): one optimisation step (5 accumulated triplets of
    512-pixel images, EMA), then one more resumed from its checkpoint, with the whole run (1,000 steps) projected.
    The triplets are random images (a CSV of concept, mosaic, benign paths): only the cost counts here."""
    import numpy as np
    from PIL import Image

    from eraselab.erase.registry import ERASERS
    from eraselab.erase.safegen import box_region, mosaic, self_attention_parameters
    from eraselab.erase.spec import EraseSpec
    from eraselab.options import build

    rng, folder, quarter = np.random.default_rng(0), workdir / "triplets", args.size // 4
    folder.mkdir(exist_ok=True)
    region = box_region((args.size, args.size), [(quarter, quarter, 3 * quarter, 3 * quarter)])
    for i in range(2):
        concept = rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
        images = {"concept": concept, "benign": rng.integers(0, 256, concept.shape, dtype=np.uint8),
                  "mosaic": mosaic(concept, region, args.size // 16)}
        for kind, image in images.items():
            Image.fromarray(image).save(folder / f"{kind}-{i}.png")
    (folder / "triplets.csv").write_text("concept,mosaic,benign\n" + "".join(
        f"concept-{i}.png,mosaic-{i}.png,benign-{i}.png\n" for i in range(2)))
    pipe = sd14_pipeline(meter, args, tokenizer, workdir, "float32")
    config = build(ERASERS, "safegen", {"triplets": str(folder / "triplets.csv"), "checkpoint": str(workdir / "sg")})
    erase, spec = ERASERS.get("safegen").erase, EraseSpec(("nudity",))
    with meter.measure(f"sd-1.4 SafeGen: 1 step ({config.accumulation} triplets, {args.size} px)") as info:
        erase(pipe, spec, config, progress=False, stop_after=1)
        info["trained_parameters_m"] = round(sum(pipe.unet.get_parameter(n).numel()
                                                 for n in self_attention_parameters(pipe.unet)) / 1e6, 1)
    with meter.measure("sd-1.4 SafeGen: 1 more step, resumed") as info:
        start = time.perf_counter()
        erase(pipe, spec, config, progress=False, stop_after=2)
        info["projected_training_s"] = round((time.perf_counter() - start) * config.iterations, 1)


def advunlearn_steps(meter: Meter, args, tokenizer, workdir: Path) -> None:
    """AdvUnlearn with the paper's settings (float32) except ``--advunlearn-ddim-steps`` and
    ``--advunlearn-attack-steps`` (50 and 30 in the paper): one warm-up iteration (the ESD step on the text encoder
    and the retain term on 5 preserved prompts), then one adversarial iteration (the inner attack first), each with
    the UNet calls it made (every x_t is drawn by DDIM to a random step, so the calls vary with the seed's draws)."""
    from eraselab.erase.registry import ERASERS
    from eraselab.erase.spec import EraseSpec
    from eraselab.options import build

    pipe = sd14_pipeline(meter, args, tokenizer, workdir, "float32")
    spec = EraseSpec(("van gogh",), preserve=("claude monet", "rembrandt", "picasso", "frida kahlo", "hokusai"),
                     templates=("a painting by {}", "art by {}"))
    config = build(ERASERS, "advunlearn", {"iterations": 2, "warmup": 1, "ddim_steps": args.advunlearn_ddim_steps,
                                           "attack_steps": args.advunlearn_attack_steps,
                                           "checkpoint": str(workdir / "advunlearn")})
    calls = []
    hook = pipe.unet.register_forward_hook(lambda *_: calls.append(1))
    erase = ERASERS.get("advunlearn").erase
    with meter.measure(f"sd-1.4 AdvUnlearn warm-up iteration ({config.ddim_steps} DDIM steps)") as info:
        erase(pipe, spec, config, progress=False, stop_after=1)
        info["unet_calls"], calls[:] = len(calls), []
    with meter.measure(f"sd-1.4 AdvUnlearn iteration with a {config.attack_steps}-step inner attack") as info:
        edit = erase(pipe, spec, config, progress=False)
        info["unet_calls"] = len(calls)
        info["trained_parameters_m"] = round(sum(t.numel() for t in edit.tensors.values()) / 1e6, 1)
    hook.remove()


def esd_resume(meter: Meter, args, tokenizer, workdir: Path) -> None:
    """ESD at SD-1.4 size under the three schedulers a pipeline may carry (PNDM as SD-1.4 ships, DDIM, multistep
    DPM-Solver): two iterations uninterrupted, then one, a "kill", and a resume; the trained tensors must be
    bit-identical (a stateful scheduler used to make each iteration depend on the ones before it)."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, PNDMScheduler

    from eraselab.erase.esd import EsdConfig
    from eraselab.erase.esd import erase as esd
    from eraselab.erase.spec import EraseSpec

    pipe = sd14_pipeline(meter, args, tokenizer, workdir, "float32")
    spec = EraseSpec(("van gogh",))
    first = None
    for scheduler in (PNDMScheduler, DDIMScheduler, DPMSolverMultistepScheduler):
        pipe.scheduler = scheduler.from_config(pipe.scheduler.config)  # as a user swaps a pipeline's scheduler
        name = scheduler.__name__
        config = EsdConfig(iterations=2, ddim_steps=args.esd_ddim_steps, checkpoint=str(workdir / f"esd-{name}-a"),
                           checkpoint_every=1)
        with meter.measure(f"sd-1.4 ESD resume, {name} pipeline (2 + 1 + 1 iterations, "
                           f"{args.esd_ddim_steps} DDIM steps)") as info:
            whole = esd(pipe, spec, config, progress=False)
            resumed_config = EsdConfig(**{**config.__dict__, "checkpoint": str(workdir / f"esd-{name}-b")})
            esd(pipe, spec, resumed_config, progress=False, stop_after=1)
            resumed = esd(pipe, spec, resumed_config, progress=False)
            first = first or whole
            info["resume_max_abs_diff"] = largest_difference(whole.tensors, resumed.tensors)  # 0: bit-identical
            info["pndm_pipeline_max_abs_diff"] = largest_difference(first.tensors, whole.tensors)


def largest_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def unlearndiff_step(meter: Meter, pipe, args, name: str = "sd-1.4", size: int | None = None) -> None:
    """One UnlearnDiffAtk gradient step as the attack takes it: relaxed tokens through the text encoder(s), the
    denoising loss at one timestep, back-propagation through the UNet and the encoder(s), Adam, the simplex."""
    import torch.nn.functional as F

    from eraselab.attack.base import whole_word_tokens
    from eraselab.attack.soft_prompt import insert_relaxed_tokens, inserted_ids, project_to_simplex
    from eraselab.attack.unlearndiff import denoising_loss
    from eraselab.models.conditioning import text_encoders, tokenizers

    size = size or args.size
    tokenizer, device = pipe.tokenizer, pipe.device
    encoders = text_encoders(pipe)
    candidates = torch.tensor(sorted(whole_word_tokens(tokenizer)), device=device)
    ids = [t(PROMPTS[1], padding="max_length", max_length=t.model_max_length, truncation=True,
             return_tensors="pt").input_ids.to(device)
           for t in tokenizers(pipe)]
    generator = torch.Generator().manual_seed(0)
    latent = torch.randn(1, 4, size // 8, size // 8, generator=generator).to(device, pipe.unet.dtype)
    noise = torch.randn(latent.shape, generator=generator).to(device, pipe.unet.dtype)
    relaxed = F.one_hot(torch.randint(len(candidates), (5,), generator=generator), len(candidates)).float()
    relaxed = relaxed[None].to(device).requires_grad_(True)
    optimizer = torch.optim.Adam([relaxed], lr=0.01)
    for module in (pipe.unet, *encoders):
        module.requires_grad_(False)
    with meter.measure(f"{name} one UnlearnDiffAtk step ({size} px)"):
        full = torch.zeros(1, 5, len(tokenizer), device=device).index_copy(2, candidates, relaxed)
        embeddings = [insert_relaxed_tokens(e, i, full) for e, i in zip(encoders, ids, strict=True)]
        loss = denoising_loss(pipe, embeddings, latent, [500], noise, input_ids=[inserted_ids(i, 5) for i in ids])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            relaxed.copy_(project_to_simplex(relaxed))


def ring_a_bell(meter: Meter, pipe, name: str = "sd-1.4") -> None:
    """One generation of the Ring-A-Bell search: the text encodings of half the population (the children)."""
    from eraselab.attack.concept_vector import ConceptVectorConfig, genetic_search
    from eraselab.models.conditioning import encode_context

    config = ConceptVectorConfig(search=True, generations=1)
    target = torch.zeros_like(encode_context(pipe, [""])[0], dtype=torch.float64)  # (77, C): C 2048 on SDXL
    with meter.measure(f"{name} Ring-A-Bell search, 1 generation (population 200)") as info:
        start = time.perf_counter()
        _, _, calls = genetic_search(pipe, target, config)
        per_row = (time.perf_counter() - start) / calls
        info.update(encoder_rows=calls)
    budget = config.population + ConceptVectorConfig().generations * (config.population - config.population // 2)
    print(json.dumps({f"{name} Ring-A-Bell default budget": f"{budget} encoder rows, projected "
                      f"{budget * per_row / 3600:.1f} h per prompt at {per_row * 1000:.0f} ms a row here"}), flush=True)


def ring_a_bell_batching(meter: Meter, args, tokenizer, workdir: Path) -> None:
    """One Ring-A-Bell generation through SDXL's two full-size text encoders, in calls of ``encode_batch`` rows
    (the default) and in one call per generation (``encode_batch`` = population): wall time and memory. The
    chunked run goes first: the allocator reuses what it keeps after a run, so the second run's peak is its own,
    where the smaller peak, measured second, would hide under the larger one's leftovers."""
    from dataclasses import replace

    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    from eraselab.attack.concept_vector import ConceptVectorConfig, genetic_search
    from eraselab.models.conditioning import encode_context

    torch.manual_seed(0)
    unet = UNet2DConditionModel(  # micro: encode_prompt never calls it
        sample_size=8, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=2048,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 1280)
    pipe = StableDiffusionXLPipeline(vae=AutoencoderKL(block_out_channels=(32,)), unet=unet,
                                     scheduler=EulerDiscreteScheduler(), **sdxl_text_side(tokenizer)).to(args.device)
    target = torch.zeros_like(encode_context(pipe, [""])[0], dtype=torch.float64)
    loaded = Meter._rss() / 2**30
    config = ConceptVectorConfig(search=True, generations=1)
    found = []
    for batch in (config.encode_batch, config.population):
        with meter.measure(f"sdxl encoders, Ring-A-Bell 1 generation, {batch} rows a call") as info:
            text, _, calls = genetic_search(pipe, target, replace(config, encode_batch=batch))
            info.update(encoder_rows=calls)
        found.append(text)
    chunked, whole = meter.rows[-2], meter.rows[-1]
    print(json.dumps({f"Ring-A-Bell, calls of {config.encode_batch} vs one call of {config.population}": {
        "loaded encoders (GB)": round(loaded, 2), "wall ratio": round(whole["wall_s"] / chunked["wall_s"], 3),
        "peak above the encoders (GB)": [round(chunked["peak_rss_gb"] - loaded, 2),
                                         round(whole["peak_rss_gb"] - loaded, 2)],
        "same prompt found": found[0] == found[1]}}), flush=True)


def sdxl(meter: Meter, args, tokenizer, workdir: Path) -> None:
    from eraselab.attack.base import AttackSpec
    from eraselab.attack.embedding_recovery import EmbeddingRecoveryConfig
    from eraselab.attack.embedding_recovery import attack as recovery
    from eraselab.erase.artifact import Edit, apply_edit
    from eraselab.erase.cross_attention_edit import projections
    from eraselab.models import load_pipeline

    with meter.measure("sdxl build from config + save"):
        torch.manual_seed(0)
        built = build_sdxl(tokenizer)
        counts = {name: round(sum(p.numel() for p in getattr(built, name).parameters()) / 1e6, 1)
                  for name in ("unet", "text_encoder", "text_encoder_2", "vae")}
        built.save_pretrained(workdir / "sdxl", safe_serialization=True)
        del built
    print(json.dumps({"sdxl parameters (M)": counts}), flush=True)
    with meter.measure("sdxl load_pipeline"):
        pipe = load_pipeline(workdir / "sdxl", device=args.device, dtype=args.dtype)
    one = [GenerationRequest(PROMPTS[0], 0, args.steps, 7.5, height=args.sdxl_size, width=args.sdxl_size)]
    generate_images(pipe, one, Batching(1), progress=False)
    throughput(meter, pipe, f"sdxl generate batch 1 ({args.sdxl_size} px, {args.steps} steps)", one, Batching(1), 1)
    edit = closed_form_edits(meter, pipe, workdir, "sdxl", methods=("uce",))
    original = {name: w.clone() for name, w in projections(pipe).items()}
    apply_edit(pipe, Edit.load(edit))
    with meter.measure("sdxl embedding recovery (8 prompts)"):
        recovery(pipe, AttackSpec("van gogh", tuple(PROMPTS)), EmbeddingRecoveryConfig(),
                 reference_projections=original)


def sdxl_esd(meter: Meter, args, tokenizer, workdir: Path) -> None:
    """One ESD iteration (esd-x, float32, x_t drawn with ``--esd-ddim-steps`` DDIM steps) on SDXL base's
    architecture, its UNet built for 512 px (``sample_size`` 64: the same 2.57 G weights, a quarter of 1,024 px's
    latent) so that training fits this CPU's memory: the trained copy shares every weight it does not train with
    the frozen UNet, so the UNet is held once. Then one UnlearnDiffAtk step and one Ring-A-Bell generation through
    both text encoders."""
    from eraselab.erase.esd import EsdConfig
    from eraselab.models import load_pipeline

    with meter.measure("sdxl (512 px) build from config + save"):
        torch.manual_seed(0)
        built = build_sdxl(tokenizer, sample_size=64)
        built.save_pretrained(workdir / "sdxl-512", safe_serialization=True)
        del built
    with meter.measure("sdxl (512 px) load_pipeline, float32"):
        pipe = load_pipeline(workdir / "sdxl-512", device=args.device, dtype="float32")
    one_esd_iteration(meter, pipe, "sdxl one ESD iteration (esd-x, float32, 512 px)",
                      EsdConfig(iterations=1, ddim_steps=args.esd_ddim_steps))
    unlearndiff_step(meter, pipe, args, "sdxl", size=512)
    ring_a_bell(meter, pipe, "sdxl")


PARTS = {"sd14": sd14, "esd-resume": esd_resume, "trce-stage2": trce_stage_two, "safegen": safegen_steps,
         "advunlearn": advunlearn_steps, "sdxl": sdxl, "sdxl-esd": sdxl_esd, "ring-a-bell": ring_a_bell_batching}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bpe", type=Path, required=True, help="bpe_simple_vocab_16e6.txt.gz (open_clip_torch)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--size", type=int, default=512, help="SD-1.4 image size in pixels")
    parser.add_argument("--steps", type=int, default=2, help="sampler steps of every generation (50 in the papers)")
    parser.add_argument("--repeats", type=int, default=3, help="timings per side of a lone image (median)")
    parser.add_argument("--repeats-batch", type=int, default=1, help="timings per side of batch 8 (median)")
    parser.add_argument("--parts", nargs="+", choices=sorted(PARTS), default=["sd14"],
                        help="sd14: every operation on SD-1.4; esd-resume: ESD's resume under PNDM, DDIM and "
                             "DPM-Solver pipelines at SD-1.4 size; trce-stage2: TRCE's second stage with the paper's "
                             "settings (GPU: its trajectories alone are about 1,000 UNet calls); safegen, "
                             "advunlearn: their training steps with the papers' settings; sdxl: SDXL base "
                             "(about 14 GB in float32); sdxl-esd: one ESD iteration and two attack steps on SDXL; "
                             "ring-a-bell: its search's encoder calls, chunked vs whole, on SDXL's encoders")
    parser.add_argument("--esd-ddim-steps", type=int, default=4, help="DDIM steps of x_t in esd-resume, sdxl-esd")
    parser.add_argument("--trce-steps", type=int, default=2, help="TRCE stage-2 steps timed after its first")
    parser.add_argument("--advunlearn-ddim-steps", type=int, default=50, help="DDIM steps of AdvUnlearn's x_t")
    parser.add_argument("--advunlearn-attack-steps", type=int, default=30, help="steps of its inner attack (K)")
    parser.add_argument("--deterministic", action="store_true",
                        help="deterministic kernels (CUDA's are not by default: resumed runs differ by rounding)")
    parser.add_argument("--sdxl-size", type=int, default=512, help="SDXL image size for its generation ratio")
    parser.add_argument("--workdir", type=Path, default=None, help="where the built models go (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="also write every row to this file")
    args = parser.parse_args()
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's condition for determinism
        torch.use_deterministic_algorithms(True)
    meter = Meter(args.device)
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "device": args.device,
                      "dtype": args.dtype}), flush=True)
    with tempfile.TemporaryDirectory() as temp:
        workdir = args.workdir or Path(temp)
        tokenizer = clip_tokenizer(workdir / "tokenizer", args.bpe)
        for part in args.parts:
            PARTS[part](meter, args, tokenizer, workdir)
    if args.json:
        args.json.write_text(json.dumps(meter.rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
