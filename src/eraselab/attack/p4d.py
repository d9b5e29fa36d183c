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
On SDXL a token's input embedding is the pair of its two encoders' rows side by side: the continuous embeddings
live in that joint space and project to the token nearest (cosine) over the pair, so the typed prompt goes through
both encoders as optimised, its pooled text included.
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
    StopOracle,
    check_budget,
    whole_word_tokens,
)
from eraselab.attack.defended_noise import DefendedNoise
from eraselab.attack.search import search_evaluations, search_prompts
from eraselab.attack.soft_prompt import condition_with_embeddings, require_one_vocabulary, token_embeddings
from eraselab.errors import EraselabError
from eraselab.models.conditioning import (
    UNetCondition,
    guidance_conditions,
    micro_conditioning,
    text_encoders,
    tokenizers,
)

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


class _ProjectedPrompt:
    """One prompt's search: continuous embeddings at the learnable positions, projected to the nearest typeable
    token for every forward pass (straight-through, PEZ), AdamW on Eq. 4 at a random step of the unedited
    model's trajectory."""

    def __init__(self, attack: _Setting, prompt: str, index: int) -> None:
        self.attack, pipe, reference = attack, attack.target, attack.reference
        device, length = pipe.device, pipe.tokenizer.model_max_length
        # The unedited model's trajectory and its noise predictions for the original prompt (the target).
        self.latents, self.timesteps = trajectory(reference, prompt, attack.spec, attack.config.trajectory_seed)
        self.original = guidance_conditions(reference, [prompt])[0]
        self.generator = torch.Generator().manual_seed(attack.config.seed * 7919 + index)
        ids, learnable = _initial_ids(prompt, pipe, attack.config, attack.words, self.generator)
        self.ids = torch.tensor(ids[: length - 2], device=device)
        self.learnable = torch.tensor(learnable[: length - 2], device=device)
        self.soft = attack.table[self.ids].clone().requires_grad_(True)  # (L, C) continuous
        self.optimizer = torch.optim.AdamW([self.soft], lr=attack.config.lr, weight_decay=attack.config.weight_decay)
        # Each tokenizer's [BOS, prompt, EOS, pad ...] (SDXL's second pads with "!", not the end token: the EOS
        # after the prompt is what ends it and where the pooled text is read); the input embeddings of both side by
        # side, as the table's rows are, the prompt's positions replaced at every pass
        frames = [tokenizer("", padding="max_length", max_length=length, return_tensors="pt").input_ids[0].to(device)
                  for tokenizer in attack.tokenizers]  # [BOS, EOS, pad ...]
        self.frame_ids = [torch.cat([frame[:1], self.ids, frame[1:]])[None, :length] for frame in frames]
        self.fixed = torch.cat([token_embeddings(encoder)[ids[0]] for encoder, ids in
                                zip(attack.encoders, self.frame_ids, strict=True)], dim=-1).detach()
        self.size = tuple(side * pipe.vae_scale_factor for side in self.latents[0].shape[-2:])  # for SDXL's time ids

    def condition(self) -> UNetCondition:
        """The projected prompt's conditioning, with the gradient straight through to the continuous embeddings."""
        attack, table = self.attack, self.attack.table
        # Project to tokens, straight-through to the continuous embeddings (PEZ).
        projected = table[nearest_tokens(self.soft, attack.table_unit, attack.candidates)]
        hard = self.soft + (projected - self.soft).detach()
        current = torch.where(self.learnable[:, None], hard, table[self.ids])
        inputs = torch.cat([self.fixed[:1], current, self.fixed[1 + len(self.ids):]])[None]  # (1, T, C)
        context, pooled = condition_with_embeddings(text_encoders(attack.target), self.frame_ids,
                                                    list(inputs.split(attack.widths, dim=-1)))
        return UNetCondition(context, pooled, micro_conditioning(attack.target, *self.size, 1, context))

    def step(self, step: int, cost: Cost) -> float:
        attack = self.attack
        condition = self.condition()
        # Eq. 4 at a random step of the unedited trajectory.
        i = int(torch.randint(len(self.timesteps), (1,), generator=self.generator))
        t = torch.tensor([self.timesteps[i]], device=attack.target.device)
        z_t = attack.reference.scheduler.scale_model_input(self.latents[i], t)
        with torch.no_grad():
            goal = attack.reference_noise(z_t, t, self.original, i)
        predicted = attack.defended(z_t, t, condition, i)
        cost.unet_evals += attack.reference_noise.calls + attack.defended.calls
        loss = F.mse_loss(predicted, goal)  # Eq. 4
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        cost.text_encoder_evals += 1
        return round(loss.item(), 6)

    def typed(self) -> str:
        projected = nearest_tokens(self.soft.detach(), self.attack.table_unit, self.attack.candidates)
        return typed_prompt(self.attack.target.tokenizer, self.ids, self.learnable, projected)


@dataclass
class _Setting:
    """What every prompt's search shares: the two models, the typeable words and the noise each side predicts."""

    target: object
    reference: object
    spec: AttackSpec
    config: P4dConfig
    words: dict[int, str]
    candidates: torch.Tensor
    encoders: list  # the target's text encoders (SDXL: two)
    tokenizers: list
    table: torch.Tensor  # every token's input embedding, (V, C); on SDXL both encoders' side by side
    table_unit: torch.Tensor
    defended: DefendedNoise  # the edited side: the guarded sampler's noise, or the plain conditional prediction
    reference_noise: DefendedNoise  # the unedited side, guided likewise

    @property
    def widths(self) -> list[int]:
        """Each text encoder's share of the table's columns."""
        return [token_embeddings(encoder).shape[-1] for encoder in self.encoders]


def attack(target_pipe, spec: AttackSpec, config: P4dConfig, reference_pipe=None) -> AttackResult:
    start = time.perf_counter()
    check_budget(config.iterations, "iterations")
    if reference_pipe is None:
        raise EraselabError("p4d needs the unedited reference model: its noise predictions are the attack's target")
    oracle = StopOracle("p4d", target_pipe, spec.concept, config.oracle, config.oracle_label,
                        config.oracle_seeds, config.oracle_rule, guard=spec.guard)
    setting = search_setting(target_pipe, reference_pipe, spec, config)
    cost = Cost(unet_evals=len(spec.prompts) * spec.steps * 2)  # each prompt's trajectory of the unedited model
    replays, searched = search_prompts("p4d", target_pipe, spec, oracle, config.iterations, config.check_every,
                                       lambda index, prompt: _ProjectedPrompt(setting, prompt, index), cost,
                                       history=20)
    cost.seconds = round(time.perf_counter() - start, 3)
    return AttackResult("p4d", THREAT_MODEL, asdict(config), replays, cost, oracle=oracle.record(),
                        details={"search": searched, "guard_in_loss": guard_in_loss(spec)})


def guard_in_loss(spec: AttackSpec) -> bool:
    """Whether the spec's guard enters the loss (it has a gradient to follow); else only the oracle queries it."""
    return spec.guard is not None and getattr(spec.guard, "differentiable", False)


def search_setting(target_pipe, reference_pipe, spec: AttackSpec, config: P4dConfig) -> _Setting:
    """What every prompt's search shares (the models frozen, the typeable words, both sides' noise)."""
    words = whole_word_tokens(target_pipe.tokenizer)
    candidates = torch.tensor(sorted(words), device=target_pipe.device)
    encoders = text_encoders(target_pipe)
    require_one_vocabulary(encoders, "p4d projects onto tokens")
    tables = [token_embeddings(encoder).detach() for encoder in encoders]
    table = torch.cat(tables, dim=-1)  # a token's input embedding in every encoder: (V, 768 + 1280) on SDXL
    for pipe in (target_pipe, reference_pipe):
        for module in (pipe.unet, *text_encoders(pipe)):
            module.requires_grad_(False)
    guarded = guard_in_loss(spec)
    # With a guard in the loss: its guided noise against the unguarded model's guided noise; without: the two
    # models' conditional predictions.
    guidance = spec.guidance if guarded else None
    return _Setting(target_pipe, reference_pipe, spec, config, words, candidates, encoders,
                    tokenizers(target_pipe), table,
                    F.normalize(table[candidates], dim=-1),  # cosine projection onto typeable words
                    DefendedNoise(target_pipe, spec.guard if guarded else None, guidance),
                    DefendedNoise(reference_pipe, None, guidance))


def evaluations(config: P4dConfig, prompts: int, steps: int) -> tuple[int, int]:
    """At most: each prompt's unedited trajectory, then its search: a step is the unedited and the defended
    model's noise (a UNet row each, two each under a guard) and one encoding; the oracle every ``check_every``."""
    unet, text = search_evaluations(config.iterations, config.check_every, len(config.oracle_seeds), steps, (4, 1))
    return prompts * (steps * 2 + unet), prompts * text


ATTACK = AttackEntry(attack, P4dConfig, THREAT_MODEL, reads="model", space="typed-text", evaluations=evaluations)
