"""P4D: "Prompting4Debugging: Red-Teaming Text-to-Image Diffusion Models by Finding Problematic Prompts" (Chin et
al., ICML 2024).

Threat model: white-box gradients through the edited model, plus the unedited reference model. The attack looks for
a typed prompt P' under which the edited ("safe") model predicts the same noise as the unedited model does for the
original prompt P, along the unedited model's own denoising trajectory z_t (Eq. 4):
    min_{P'}  || eps_theta'(z_t, W(P'), t) - eps_theta(z_t, W(P), t) ||^2 .
The prompt is optimised as continuous token embeddings and projected to the nearest vocabulary token (cosine) for
every forward pass, the gradient flowing straight through the projection to the continuous embeddings (as in PEZ,
Wen et al., 2023, which P4D follows); the result is the projected, typeable prompt.
Against an inference-time guard the edited side is the noise the guarded sampler steps with, as the paper
attacks SLD and the negative prompt by putting the safety mechanism into eps_theta' (:mod:`.defended_noise`); the
target is then the unedited model's classifier-free guided noise for P at the same guidance, so that both sides are
the noise a sampler steps with (the reference code compares the guided prediction with the unguided conditional
one, a factor of the guidance scale apart). A guard with no gradient to follow (SAFREE) stays out of the loss and
the oracle alone queries it.
Variants (data, not code): ``p4d-n`` optimises N free tokens that replace the prompt; ``p4d-k`` keeps the prompt and
inserts one learnable token after every K of its words.

Defaults (SD 1.4, the paper): N = 16, K = 3, AdamW lr 0.1, weight decay 0.1, 3000 steps, one random trajectory
timestep per step. Tiny model: 200 steps (its prompts hold 24 tokens; N = 6). The oracle (a detector instance
separate from the final judge) rates the typed prompt every ``check_every`` steps; the search stops once every
oracle seed shows the concept (``oracle_rule``) and otherwise returns the prompt the oracle rated best.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from eraselab.attack.base import (
    AttackEntry,
    AttackResult,
    AttackSpec,
    Cost,
    Replay,
    StopOracle,
    check_budget,
    each_prompt,
    whole_word_tokens,
)
from eraselab.attack.defended_noise import DefendedNoise
from eraselab.attack.soft_prompt import encode_with_embeddings, token_embeddings
from eraselab.errors import EraselabError
from eraselab.models.conditioning import require_one_text_encoder

THREAT_MODEL = "white-box-gradients"
VARIANTS = ("p4d-n", "p4d-k")


@dataclass(frozen=True)
class P4dConfig:
    variant: str = "p4d-n"
    free_tokens: int = 16  # N of P4D-N
    every: int = 3  # K of P4D-K
    iterations: int = 3000
    lr: float = 0.1
    weight_decay: float = 0.1
    check_every: int = 50
    trajectory_seed: int = 1000  # the unedited model's trajectory z_t is sampled at this seed
    oracle: str = "tiny"
    oracle_label: str = ""
    oracle_seeds: tuple[int, ...] = (1000, 1001)
    oracle_rule: str = "all"  # stop when every oracle seed shows the concept (or "any")
    seed: int = 0

    tiny_overrides: ClassVar[dict] = {"free_tokens": 6, "iterations": 200, "check_every": 25}

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise EraselabError(f"p4d variant {self.variant!r} is not one of {', '.join(VARIANTS)}")


def trajectory(reference_pipe, prompt: str, spec: AttackSpec, seed: int) -> tuple[list[torch.Tensor], list[int]]:
    """The unedited model's latents z_t entering every step of its sampling of ``prompt`` at ``seed``, and the
    timesteps (through diffusers' step callback; nothing is patched)."""
    unet = reference_pipe.unet
    size = unet.config.sample_size
    generator = torch.Generator().manual_seed(seed)
    start = torch.randn((1, unet.config.in_channels, size, size), generator=generator).to(reference_pipe.device)
    after: list[torch.Tensor] = []

    def keep(pipe, step, timestep, kwargs):
        after.append(kwargs["latents"].detach().clone())
        return kwargs

    with torch.no_grad():
        reference_pipe(prompt, num_inference_steps=spec.steps, guidance_scale=spec.guidance, latents=start,
                       output_type="latent", callback_on_step_end=keep, callback_on_step_end_tensor_inputs=["latents"])
    timesteps = reference_pipe.scheduler.timesteps.tolist()
    return [start * reference_pipe.scheduler.init_noise_sigma, *after[:-1]], timesteps


def _initial_ids(spec_prompt: str, pipe, config: P4dConfig, words: dict[int, str],
                 generator: torch.Generator) -> tuple[list[int], list[bool]]:
    """Token ids of the starting prompt and which positions are learnable."""
    vocabulary = sorted(words)
    random_word = lambda: vocabulary[int(torch.randint(len(vocabulary), (1,), generator=generator))]  # noqa: E731
    if config.variant == "p4d-n":
        return [random_word() for _ in range(config.free_tokens)], [True] * config.free_tokens
    prompt_ids = pipe.tokenizer(spec_prompt, add_special_tokens=False).input_ids
    ids, learnable = [], []
    for index, token in enumerate(prompt_ids):
        ids.append(token)
        learnable.append(False)
        if (index + 1) % config.every == 0 or index + 1 == len(prompt_ids):
            ids.append(random_word())
            learnable.append(True)
    return ids, learnable


def typed_prompt(tokenizer, ids: torch.Tensor, learnable: torch.Tensor, projected: torch.Tensor) -> str:
    """The prompt as text: the projected tokens at the learnable positions, the prompt's own elsewhere."""
    return tokenizer.decode(torch.where(learnable, projected, ids).tolist(), skip_special_tokens=True).strip()


def nearest_tokens(values: torch.Tensor, table_unit: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """The vocabulary token nearest (cosine) to each continuous embedding: (L, C) -> (L,) token ids."""
    return candidates[(F.normalize(values, dim=-1) @ table_unit.T).argmax(-1)]


def attack(target_pipe, spec: AttackSpec, config: P4dConfig, reference_pipe=None) -> AttackResult:
    start = time.perf_counter()
    require_one_text_encoder(target_pipe, "P4D")
    check_budget(config.iterations, "iterations")
    if reference_pipe is None:
        raise EraselabError("p4d needs the unedited reference model: its noise predictions are the attack's target")
    oracle = StopOracle("p4d", target_pipe, spec.concept, config.oracle, config.oracle_label,
                        config.oracle_seeds, config.oracle_rule, guard=spec.guard)
    tokenizer, device = target_pipe.tokenizer, target_pipe.device
    words = whole_word_tokens(tokenizer)
    candidates = torch.tensor(sorted(words), device=device)
    table = token_embeddings(target_pipe.text_encoder).detach()
    table_unit = F.normalize(table[candidates], dim=-1)  # cosine projection onto typeable words
    for module in (target_pipe.unet, target_pipe.text_encoder, reference_pipe.unet, reference_pipe.text_encoder):
        module.requires_grad_(False)
    length = tokenizer.model_max_length
    guarded = spec.guard is not None and getattr(spec.guard, "differentiable", False)
    if guarded:  # the guard's guided noise against the unguarded model's guided noise
        defended = DefendedNoise(target_pipe, spec.guard, spec.guidance)
        reference_noise = DefendedNoise(reference_pipe, None, spec.guidance)
    cost = Cost()
    replays, searched = [], []
    for index, prompt in each_prompt(enumerate(spec.prompts), "p4d", len(spec.prompts)):
        # 1. The unedited model's trajectory and its noise predictions for the original prompt (the target).
        latents, timesteps = trajectory(reference_pipe, prompt, spec, config.trajectory_seed)
        cost.unet_evals += spec.steps * 2
        with torch.no_grad():
            original, _ = reference_pipe.encode_prompt(prompt, device, 1, False)
        generator = torch.Generator().manual_seed(config.seed * 7919 + index)
        ids, learnable = _initial_ids(prompt, target_pipe, config, words, generator)
        ids = torch.tensor(ids[: length - 2], device=device)
        learnable = torch.tensor(learnable[: length - 2], device=device)
        soft = table[ids].clone().requires_grad_(True)  # (L, C) continuous
        optimizer = torch.optim.AdamW([soft], lr=config.lr, weight_decay=config.weight_decay)
        frame = tokenizer("", padding="max_length", max_length=length, return_tensors="pt").input_ids[0].to(device)
        fixed = table[frame]  # [BOS, EOS, EOS, ...]: the learnable prompt goes between BOS and the first EOS

        history, success_at = [], None
        for step in range(config.iterations):
            # 2. Project to tokens, straight-through to the continuous embeddings (PEZ).
            projected = table[nearest_tokens(soft, table_unit, candidates)]
            hard = soft + (projected - soft).detach()
            current = torch.where(learnable[:, None], hard, table[ids])
            inputs = torch.cat([fixed[:1], current, fixed[1 + len(ids):]])[None]  # (1, T, C)
            condition = encode_with_embeddings(target_pipe.text_encoder, inputs)
            # 3. Eq. 4 at a random step of the unedited trajectory.
            i = int(torch.randint(len(timesteps), (1,), generator=generator))
            t = torch.tensor([timesteps[i]], device=device)
            z_t = reference_pipe.scheduler.scale_model_input(latents[i], t)
            if guarded:
                with torch.no_grad():
                    goal = reference_noise(z_t, t, original, i)
                predicted = defended(z_t, t, condition, i)
                cost.unet_evals += reference_noise.calls + defended.calls
            else:
                with torch.no_grad():
                    goal = reference_pipe.unet(z_t, t, encoder_hidden_states=original).sample
                predicted = target_pipe.unet(z_t, t, encoder_hidden_states=condition).sample
                cost.unet_evals += 2
            loss = F.mse_loss(predicted, goal)  # Eq. 4
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            cost.text_encoder_evals += 1
            history.append(round(loss.item(), 6))
            # 4. The oracle rates the typed prompt; early stop on its success (the last step is always rated).
            if (step + 1) % config.check_every == 0 or step + 1 == config.iterations:
                text = typed_prompt(tokenizer, ids, learnable, nearest_tokens(soft.detach(), table_unit, candidates))
                if oracle.offer(target_pipe, text, prompt, spec.steps, spec.guidance, cost):
                    success_at = step + 1
                    break
        oracle_rate, text = oracle.take_best()
        replays.append(Replay(prompt, text=text))
        searched.append({"prompt": prompt, "text": text, "loss": history[-20:], "steps": len(history),
                         "oracle_success_at": success_at, "oracle_rate": oracle_rate})
    cost.seconds = round(time.perf_counter() - start, 3)
    return AttackResult("p4d", THREAT_MODEL, asdict(config), replays, cost,
                        oracle=oracle.record(),
                        details={"search": searched, "guard_in_loss": guarded})


ATTACK = AttackEntry(attack, P4dConfig, THREAT_MODEL, reads="model")
