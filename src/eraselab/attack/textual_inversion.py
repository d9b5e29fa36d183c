"""Textual inversion against erasure: "Circumventing Concept Erasure Methods For Text-to-Image Generative Models"
(Pham et al., ICLR 2024), using Textual Inversion (Gal et al., ICLR 2023).

Threat model: white-box gradients through the edited model (and the unedited model's images of the concept). One
new token embedding v* is learnt on the *edited* model with the textual-inversion objective (Gal et al., Eq. 2)
    v* = argmin_v  E_{x, y, t, eps} || eps - eps_theta'(x_t, t, c_theta(y_v)) ||^2 ,
where x runs over latents of images of the concept (drawn by the unedited model from the attacked prompts at
``image_seeds``) and y_v is the prompt with the concept's word replaced by the new token. Erasure methods that only
remap the concept's words leave other inputs that draw it; v* finds one. The token is reusable: the replay of
every prompt puts v* in the concept's place (prompt embeddings, since no tokenizer can type it).

On SDXL (two text encoders, as diffusers' SDXL textual-inversion script trains) one v* per encoder, in the same
slot; the replay carries the pooled text they give, not the typed prompt's.

Defaults (SD 1.4, Gal et al.): Adam lr 5e-3, batch 4, 5000 steps, v initialised from the concept's own word.
Tiny model: 300 steps, 4 image seeds per prompt.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from eraselab.attack.base import AttackEntry, AttackResult, AttackSpec, Cost, Replay, check_budget
from eraselab.attack.soft_prompt import condition_with_embeddings, token_embeddings
from eraselab.attack.unlearndiff import target_latents
from eraselab.errors import EraselabError
from eraselab.models.conditioning import UNetCondition, micro_conditioning, text_encoders, tokenizers
from eraselab.sampling import prediction_target

THREAT_MODEL = "white-box-gradients"


@dataclass(frozen=True)
class TextualInversionConfig:
    steps: int = 5000
    lr: float = 5e-3
    batch: int = 4
    image_seeds: tuple[int, ...] = (1000, 1001, 1002, 1003)  # the unedited model's images of the concept
    seed: int = 0

    tiny_overrides: ClassVar[dict] = {"steps": 300}


def concept_slot(tokenizer, prompt: str, concept: str) -> tuple[torch.Tensor, int]:
    """Token ids of ``prompt`` with its concept words replaced by one placeholder token, and that slot's index."""
    pattern = re.compile(rf"\b{re.escape(concept)}\b")
    if not pattern.search(prompt):
        raise EraselabError(f"textual-inversion puts its token in the concept's place, and {prompt!r} does not "
                            f"name {concept!r}")
    before = pattern.split(prompt, maxsplit=1)[0]
    slot = 1 + len(tokenizer(before.strip(), add_special_tokens=False).input_ids) if before.strip() else 1
    # Any single token whose embedding v* replaces; not the end token, which would end the prompt early where the
    # pooled text is read (SDXL: at the first end token)
    placeholder = tokenizer.bos_token
    ids = tokenizer(pattern.sub(placeholder, prompt, count=1), padding="max_length",
                    max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
    return ids, slot


def with_token(text_encoder, ids: torch.Tensor, slot: int, vector: torch.Tensor) -> torch.Tensor:
    """Input embeddings (1, T, C) of ``ids`` with position ``slot`` holding ``vector``."""
    typed = token_embeddings(text_encoder)[ids]  # (1, T, C)
    mask = torch.zeros(ids.shape[1], 1, dtype=typed.dtype, device=typed.device)
    mask[slot] = 1
    return typed * (1 - mask) + vector[None, None] * mask


def attack(target_pipe, spec: AttackSpec, config: TextualInversionConfig, reference_pipe=None) -> AttackResult:
    start = time.perf_counter()
    check_budget(config.steps, "steps")
    check_budget(config.batch, "batch")
    if reference_pipe is None:
        raise EraselabError("textual-inversion needs the unedited model to draw the concept's images")
    device = target_pipe.device
    encoders = text_encoders(target_pipe)
    slots = [[concept_slot(tokenizer, prompt, spec.concept) for tokenizer in tokenizers(target_pipe)]
             for prompt in spec.prompts]
    cost = Cost()
    # 1. The concept's images, drawn by the unedited model, as latents x_0.
    pairs = [(index, prompt, seed) for index, prompt in enumerate(spec.prompts) for seed in config.image_seeds]
    latents = target_latents(reference_pipe, [(prompt, seed) for _, prompt, seed in pairs], spec)
    examples = [(latent, index) for latent, (index, _, _) in zip(latents, pairs, strict=True)]
    cost.unet_evals += len(examples) * spec.steps * 2
    # 2. v* starts at the embedding of the concept's (last) word token (on SDXL one v* per text encoder).
    concept_ids = target_pipe.tokenizer(spec.concept, add_special_tokens=False).input_ids
    vectors = [token_embeddings(encoder)[concept_ids[-1]].detach().clone().requires_grad_(True) for encoder in encoders]
    for module in (target_pipe.unet, *encoders):
        module.requires_grad_(False)
    optimizer = torch.optim.Adam(vectors, lr=config.lr)
    scheduler = target_pipe.scheduler
    generator = torch.Generator().manual_seed(config.seed)
    height, width = (side * target_pipe.vae_scale_factor for side in latents[0].shape[-2:])

    def condition(prompts: list[int], v: list[torch.Tensor]) -> UNetCondition:
        """The prompts (indices) with the token(s) v in the concept's place, as the UNet reads them (each prompt
        encoded on its own, as it always was: a batched encoding may round differently)."""
        rows = []
        for i in prompts:
            ids = [slots[i][k][0].to(device) for k in range(len(encoders))]
            typed = [with_token(encoder, ids[k], slots[i][k][1], v[k]) for k, encoder in enumerate(encoders)]
            context, pooled = condition_with_embeddings(encoders, ids, typed)
            rows.append(UNetCondition(context, pooled,
                                      micro_conditioning(target_pipe, height, width, 1, context)))
        return UNetCondition.cat(rows)

    history = []
    for _ in range(config.steps):
        # 3. Eq. 2 of Gal et al. on a batch of (image, prompt) pairs at random timesteps.
        picks = torch.randint(len(examples), (config.batch,), generator=generator).tolist()
        latents = torch.cat([examples[i][0] for i in picks])
        noise = torch.randn(latents.shape, generator=generator).to(device, latents.dtype)
        t = torch.randint(scheduler.config.num_train_timesteps, (config.batch,), generator=generator).to(device)
        conditions = condition([examples[i][1] for i in picks], vectors)
        predicted = target_pipe.unet(scheduler.add_noise(latents, noise, t), t, **conditions.unet_kwargs()).sample
        loss = F.mse_loss(predicted, prediction_target(scheduler, latents, noise, t))  # eps (v on v-prediction)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        cost.unet_evals += config.batch
        cost.text_encoder_evals += config.batch
        history.append(round(loss.item(), 5))
    # 4. Replays: every prompt with v* in the concept's place (on SDXL its pooled text too).
    replays = []
    with torch.no_grad():
        for index, prompt in enumerate(spec.prompts):
            found = condition([index], [v.detach() for v in vectors])
            replays.append(Replay(prompt, embeddings=found.context.float(),
                                  pooled=None if found.pooled is None else found.pooled.float()))
    cost.text_encoder_evals += len(spec.prompts)
    cost.seconds = round(time.perf_counter() - start, 3)
    window = max(1, len(history) // 10)
    tokens = {"token": vectors[0].detach().cpu().tolist()} | (
        {"token_2": vectors[1].detach().cpu().tolist()} if len(vectors) > 1 else {})
    return AttackResult("textual-inversion", THREAT_MODEL, asdict(config), replays, cost,
                        details={**tokens, "loss_first": sum(history[:window]) / window,
                                 "loss_last": sum(history[-window:]) / window})


def evaluations(config: TextualInversionConfig, prompts: int, steps: int) -> tuple[int, int]:
    """Exactly: the concept's images (each prompt at each image seed, a guided trajectory of the unedited model:
    its encodings are not counted), then ``steps`` optimisation steps of ``batch`` UNet rows and encodings, and
    each prompt's replay encoding."""
    images = prompts * len(config.image_seeds)
    return images * steps * 2 + config.steps * config.batch, config.steps * config.batch + prompts


ATTACK = AttackEntry(attack, TextualInversionConfig, THREAT_MODEL, reads="model", space="input-embeddings",
                     evaluations=evaluations)
