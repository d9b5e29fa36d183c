"""Train the built-in tiny text-to-image model: VAE, then tiny CLIP, then UNet, then the attribute classifier.

The recipe follows Stable Diffusion (Rombach et al., CVPR 2022) in miniature:
1. an AutoencoderKL trained on reconstruction with a small KL term (SD adds perceptual and GAN losses; at
   32x32 flat shapes an L1 + L2 loss suffices), latents scaled to unit variance (``scaling_factor``);
2. a CLIP (Radford et al., 2021) trained contrastively on image-caption pairs of the world (on the pooled [EoT]
   state, and on the mean of the word tokens' states, which the UNet reads too), with every
   paraphrase including the held-out ones, as OpenAI's CLIP saw the whole web; its text tower is then frozen;
3. a UNet trained on the epsilon-prediction loss (Ho et al., 2020, Eq. 14) with SD's scaled-linear schedule,
   conditioned on the frozen text tower's last hidden states, 10% caption dropout for classifier-free
   guidance, Min-SNR-5 loss weighting (Hang et al., ICCV 2023) and an EMA of the weights; the UNet sees
   training paraphrases only;
4. the attribute classifier, on fresh drawings, half of them passed through the VAE so that it judges
   generated images as fairly as drawn ones.

Every random draw is derived from (seed, stage, step), so a run stopped at any checkpoint and resumed gives
the same weights as an uninterrupted one on the same machine.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, StableDiffusionPipeline
from diffusers.training_utils import EMAModel
from safetensors.torch import save_file
from tqdm.auto import tqdm
from transformers import CLIPImageProcessor, CLIPModel, CLIPTextModel, CLIPTokenizer

from eraselab.errors import EraselabError
from eraselab.models.tiny.architecture import (
    AttributeClassifier,
    TinySizes,
    make_clip,
    make_scheduler,
    make_unet,
    make_vae,
)
from eraselab.models.tiny.classifier import images_to_tensor
from eraselab.models.tiny.stages import Paused, Stage, TrainRun, TrainSteps
from eraselab.models.tiny.tokenizer import write_tokenizer
from eraselab.models.tiny.world import ATTRIBUTES, World, load_world


def train_vae(run: TrainRun) -> tuple[AutoencoderKL, dict]:
    world, steps = run.world, run.steps
    torch.manual_seed(run.seed)
    vae = make_vae(run.sizes)
    stage = Stage(run, "vae", vae, lr=5e-4, total=steps.vae)

    def step_fn(step: int) -> float:
        rng = run.rng("vae", step)
        images = images_to_tensor(world.draw(world.sample_attributes(rng, steps.vae_batch), rng))
        posterior = vae.encode(images).latent_dist
        noise = torch.from_numpy(rng.standard_normal(posterior.mean.shape).astype(np.float32))
        recon = vae.decode(posterior.mean + posterior.std * noise).sample  # reparameterised z ~ q(z|x)
        loss = F.l1_loss(recon, images) + F.mse_loss(recon, images) + 1e-6 * posterior.kl().mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        return loss.item()

    loss = stage.run(step_fn)
    vae.eval()
    # Scale latents to unit variance, as SD's 0.18215 does for its VAE.
    rng = run.rng("vae", steps.vae + 1)
    with torch.no_grad():
        images = images_to_tensor(world.draw(world.sample_attributes(rng, 512), rng))
        latents = vae.encode(images).latent_dist.mean
        recon = vae.decode(latents).sample
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    return vae, {"final_loss": loss, "reconstruction_mae_0_255": float((recon - images).abs().mean() * 127.5)}


def _clip_targets(captions: list, attrs: list[dict[str, int]]) -> torch.Tensor:
    """(B_text, B_image) 0/1 matrix: caption i describes image j (every attribute it names agrees)."""
    return torch.tensor([[float(c.matches(a)) for a in attrs] for c in captions])


def _multi_positive_infonce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric InfoNCE (Radford et al., Eq. in Fig. 3) over (B_text, B_image) logits, with every image
    a caption truly describes counted as a positive: the world repeats attribute tuples within a batch, so
    one-hot targets would punish true matches."""
    loss_text = -(targets / targets.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
    loss_image = -(targets.T / targets.T.sum(1, keepdim=True) * logits.T.log_softmax(1)).sum(1).mean()
    return (loss_text + loss_image) / 2


def _tokenize(tokenizer: CLIPTokenizer, texts: list[str]) -> torch.Tensor:
    return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def train_clip(run: TrainRun, tokenizer: CLIPTokenizer) -> tuple[CLIPModel, dict]:
    world, steps = run.world, run.steps
    torch.manual_seed(run.seed + 1)
    clip = make_clip(run.sizes, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
    stage = Stage(run, "clip", clip, lr=1e-3, total=steps.clip)

    def step_fn(step: int) -> float:
        rng = run.rng("clip", step)
        batch = world.sample_attributes(rng, steps.clip_batch)
        attrs = [world.attributes_of(batch, i) for i in range(steps.clip_batch)]
        captions = [world.caption(a, rng, vocabulary="all") for a in attrs]
        images = images_to_tensor(world.draw(batch, rng))
        ids = _tokenize(tokenizer, [c.text for c in captions])
        output = clip(input_ids=ids, pixel_values=images)
        targets = _clip_targets(captions, attrs)
        # The UNet reads every token's hidden state, not only the pooled [EoT] one CLIP's loss shapes, so a
        # second term contrasts the mean of the word tokens' states too: a paraphrase's own tokens then carry
        # its concept, as the tokens of a web-scale CLIP do.
        words = ((ids != tokenizer.bos_token_id) & (ids != tokenizer.eos_token_id)).unsqueeze(-1).float()
        hidden = output.text_model_output.last_hidden_state  # (B, T, C)
        mean_words = clip.text_projection((hidden * words).sum(1) / words.sum(1).clamp(min=1))
        mean_words = mean_words / mean_words.norm(dim=-1, keepdim=True)
        logits_words = clip.logit_scale.exp() * mean_words @ output.image_embeds.T
        loss = (_multi_positive_infonce(output.logits_per_text, targets)
                + _multi_positive_infonce(logits_words, targets)) / 2
        loss.backward()
        torch.nn.utils.clip_grad_norm_(clip.parameters(), 1.0)
        return loss.item()

    loss = stage.run(step_fn)
    clip.eval()
    return clip, {"final_loss": loss}


def train_unet(run: TrainRun, vae: AutoencoderKL, text_encoder: CLIPTextModel,
               tokenizer: CLIPTokenizer) -> tuple[torch.nn.Module, dict]:
    world, steps = run.world, run.steps
    scheduler = make_scheduler()
    latent_size = run.sizes.image_size // 2 ** (len(run.sizes.vae_channels) - 1)
    # 1. Encode a fixed pool of drawn images once (SD training caches latents the same way).
    pool_rng = run.rng("unet", 1 << 40)  # a step index no loop reaches
    pool = world.sample_attributes(pool_rng, steps.latent_pool)
    means, stds = [], []
    with torch.no_grad():
        for start in tqdm(range(0, steps.latent_pool, 256), desc="encode latent pool", leave=False):
            chunk = {a: v[start:start + 256] for a, v in pool.items()}
            dist = vae.encode(images_to_tensor(world.draw(chunk, pool_rng))).latent_dist
            means.append(dist.mean)
            stds.append(dist.std)
    means_t, stds_t = torch.cat(means), torch.cat(stds)
    factor = vae.config.scaling_factor
    alphas = scheduler.alphas_cumprod
    snr = alphas / (1 - alphas)
    weights = torch.clamp(snr, max=5.0) / snr  # Min-SNR-5 weighting for epsilon prediction (Hang et al., Eq. 8)

    # 2. The UNet, its EMA and the loop.
    torch.manual_seed(run.seed + 2)
    unet = make_unet(run.sizes, latent_size)
    ema = EMAModel(unet.parameters(), decay=0.999)
    stage = Stage(run, "unet", unet, lr=5e-4, total=steps.unet, extra_state={"ema": ema})

    def step_fn(step: int) -> float:
        rng = run.rng("unet", step)
        index = rng.integers(0, steps.latent_pool, steps.unet_batch)
        noise_pick = torch.from_numpy(rng.standard_normal(means_t[index].shape).astype(np.float32))
        latents = (means_t[index] + stds_t[index] * noise_pick) * factor
        texts = []
        for i in index:
            attributes = {a: int(pool[a][i]) for a in ATTRIBUTES}
            texts.append("" if rng.random() < 0.1 else world.caption(attributes, rng, vocabulary="train").text)
        with torch.no_grad():
            hidden = text_encoder(_tokenize(tokenizer, texts))[0]  # (B, T, C) last hidden states, as in SD
        timesteps = torch.from_numpy(rng.integers(0, scheduler.config.num_train_timesteps, steps.unet_batch))
        noise = torch.from_numpy(rng.standard_normal(latents.shape).astype(np.float32))
        noisy = scheduler.add_noise(latents, noise, timesteps)  # x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps
        prediction = unet(noisy, timesteps, hidden).sample
        per_item = (prediction - noise).pow(2).mean(dim=(1, 2, 3))  # Ho et al. Eq. 14
        loss = (weights[timesteps] * per_item).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        return loss.item()

    loss = stage.run(step_fn, extra=lambda: ema.step(unet.parameters()))
    ema.copy_to(unet.parameters())
    unet.eval()
    return unet, {"final_loss": loss}


def train_classifier(run: TrainRun, vae: AutoencoderKL) -> tuple[AttributeClassifier, dict]:
    world, steps = run.world, run.steps
    torch.manual_seed(run.seed + 3)
    heads = {a: len(world.classes[a]) for a in ATTRIBUTES}
    model = AttributeClassifier(heads, run.sizes.classifier_channels)
    stage = Stage(run, "classifier", model, lr=2e-3, total=steps.classifier)

    def step_fn(step: int) -> float:
        rng = run.rng("classifier", step)
        batch = world.sample_attributes(rng, steps.classifier_batch)
        images = images_to_tensor(world.draw(batch, rng))
        half = steps.classifier_batch // 2
        with torch.no_grad():  # judge generated images fairly: half the batch goes through the VAE
            images[:half] = vae.decode(vae.encode(images[:half]).latent_dist.mean).sample.clamp(-1, 1)
        sigma = torch.from_numpy(rng.uniform(0, 0.08, (len(images), 1, 1, 1)).astype(np.float32))
        images = images + sigma * torch.from_numpy(rng.standard_normal(images.shape).astype(np.float32))
        logits = model(images)
        loss = sum(F.cross_entropy(logits[a], torch.from_numpy(batch[a])) for a in ATTRIBUTES)
        loss.backward()
        return loss.item()

    model.train()
    loss = stage.run(step_fn)
    model.eval()
    return model, {"final_loss": loss}


def save_classifier(model: AttributeClassifier, world: World, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, directory / "model.safetensors")
    config = {"head_sizes": model.head_sizes, "channels": list(model.channels), "classes": world.classes,
              "world_version": world.version}
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def finish_clip_directory(directory: Path, world: World, sizes: TinySizes) -> None:
    """Tokenizer and image-processor files beside the tiny CLIP's weights, so ``transformers`` loads it whole:
    the images it was trained on are [-1, 1], i.e. mean 0.5 and std 0.5 after rescaling to [0, 1]."""
    write_tokenizer(directory, world.vocabulary, sizes.max_length)
    size = sizes.image_size
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                       image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5]).save_pretrained(directory)


def _save_text_encoder(clip: CLIPModel, directory: Path) -> None:
    text_encoder = CLIPTextModel(clip.config.text_config)
    # transformers 5 flattened CLIPTextModel; 4.x nests the same modules under `.text_model`.
    getattr(text_encoder, "text_model", text_encoder).load_state_dict(clip.text_model.state_dict())
    text_encoder.save_pretrained(directory, safe_serialization=True)


def train_tiny(out: Path, seed: int = 0, sizes: TinySizes | None = None, steps: TrainSteps | None = None,
               stop_after_steps: int | None = None) -> dict:
    """Train every part into ``out`` (``pipeline/``, ``clip/``, ``classifier/``) and resume a stopped run.

    ``stop_after_steps`` pauses after that many optimisation steps (checkpointed); call again to go on. The
    returned log says ``"complete": True`` once every stage is done.
    """
    run = TrainRun(load_world(), out, seed, sizes or TinySizes(), steps or TrainSteps(), stop_after_steps)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "train_log.json"
    log = json.loads(log_path.read_text()) if log_path.exists() else {"stages": {}}
    sizes_json = json.loads(json.dumps(run.sizes.to_dict()))
    if log.get("seed", seed) != seed or log.get("sizes", sizes_json) != sizes_json:
        raise EraselabError(f"{out} holds a run with another seed or sizes; pass a fresh --out directory")
    log |= {"seed": seed, "sizes": sizes_json, "steps": asdict(run.steps), "world_version": run.world.version,
            "complete": False}
    pipe_dir = out / "pipeline"

    def record(stage: str, metrics: dict, started: float) -> None:
        log["stages"][stage] = {**metrics, "seconds": round(time.perf_counter() - started, 1)}
        log_path.write_text(json.dumps(log, indent=2) + "\n")

    try:
        # 1. VAE
        started = time.perf_counter()
        if "vae" not in log["stages"]:
            vae, metrics = train_vae(run)
            vae.save_pretrained(pipe_dir / "vae", safe_serialization=True)
            record("vae", metrics, started)
        vae = AutoencoderKL.from_pretrained(pipe_dir / "vae").eval()

        # 2. Tokenizer and tiny CLIP; its text tower becomes the pipeline's frozen text encoder.
        write_tokenizer(pipe_dir / "tokenizer", run.world.vocabulary, run.sizes.max_length)
        tokenizer = CLIPTokenizer.from_pretrained(pipe_dir / "tokenizer")
        started = time.perf_counter()
        if "clip" not in log["stages"]:
            clip, metrics = train_clip(run, tokenizer)
            clip.save_pretrained(out / "clip", safe_serialization=True)
            finish_clip_directory(out / "clip", run.world, run.sizes)
            _save_text_encoder(clip, pipe_dir / "text_encoder")
            record("clip", metrics, started)
        text_encoder = CLIPTextModel.from_pretrained(pipe_dir / "text_encoder").eval()

        # 3. UNet, then the whole pipeline directory.
        started = time.perf_counter()
        if "unet" not in log["stages"]:
            unet, metrics = train_unet(run, vae, text_encoder, tokenizer)
            pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                           scheduler=make_scheduler(), safety_checker=None, feature_extractor=None,
                                           requires_safety_checker=False)
            pipe.save_pretrained(pipe_dir, safe_serialization=True)
            # Our own tokenizer files (with the closed-vocabulary flag) replace what save_pretrained rewrote.
            for name in ("tokenizer.json", "added_tokens.json"):
                (pipe_dir / "tokenizer" / name).unlink(missing_ok=True)
            write_tokenizer(pipe_dir / "tokenizer", run.world.vocabulary, run.sizes.max_length)
            record("unet", metrics, started)

        # 4. Classifier
        started = time.perf_counter()
        if "classifier" not in log["stages"]:
            classifier, metrics = train_classifier(run, vae)
            save_classifier(classifier, run.world, out / "classifier")
            record("classifier", metrics, started)
    except Paused as paused:
        log["paused_in"] = str(paused)
        log_path.write_text(json.dumps(log, indent=2) + "\n")
        return log
    log.pop("paused_in", None)
    log["complete"] = True
    log["total_seconds"] = round(sum(s["seconds"] for s in log["stages"].values()), 1)
    log_path.write_text(json.dumps(log, indent=2) + "\n")
    return log
