"""UnlearnDiffAtk: "To Generate or Not? Safety-Driven Unlearned Diffusion Models Are Still Easy To Generate Unsafe
Images ... For Now" (Zhang et al., ECCV 2024).

Threat model: white-box gradients through the edited model. The diffusion model is its own classifier: an
adversarial prompt that lets the *edited* model denoise an image of the concept well is a prompt under which the
edited model draws the concept. With x_0 the latent of a target image of the concept (made by the unedited model
from the attacked prompt, at ``target_seed``) and P = [k adversarial tokens] + prompt, the attack solves (Eq. 3)
    min_{P_adv}  E_{t, eps} || eps_theta'(x_t | P) - eps ||^2,   x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps,
over k relaxed tokens (each a distribution over the vocabulary, embedding z E; :mod:`.soft_prompt`), with Adam and
a projection back onto the simplex after every step; the typed prompt takes each token's argmax. Timesteps are
visited in sequence along the sampler's schedule, one per step as in the paper, or ``timesteps_per_step`` at a
time in one batched UNet call (same loss and gradient, fewer calls: ``benchmarks/attacks.py`` times both). Every
``check_every`` steps the typed prompt is generated at the oracle seeds and rated by the oracle (a separate
detector instance, never the final judge); the attack stops once every oracle seed shows the concept
(``oracle_rule``) and otherwise returns the prompt the oracle rated best.

Defaults (SD 1.4, the paper): k = 5 prepended tokens, 40 steps, Adam lr 0.01, one timestep per step, checked
every step. Tiny model: k = 5 as well, lr 0.1, 100 steps, checked every 5 steps (a check costs a whole generation,
50 UNet calls, against 1 for a gradient step). k and the steps were set on the oracle, never the final judge:
against UCE "star" (6 prompts), with k = 3 and 40 steps no typed prompt met the oracle's all-seeds rule (the best
of each: 1 of 2 seeds, or none); with k = 5 and 100 steps two of six did.
On SDXL a relaxed token is one distribution over the vocabulary the two tokenizers share, embedded through each
encoder's own table (z E_1, z E_2), and the pooled text is read where the end token moved.
Against an inference-time guard the loss stays the paper's (the conditional denoiser scores the target image; a
guided prediction is no estimate of the added noise), and the oracle queries the guarded sampler, as deployed.
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
    whole_word_tokens,
)
from eraselab.attack.search import search_evaluations, search_prompts
from eraselab.attack.soft_prompt import (
    condition_with_embeddings,
    insert_relaxed_tokens,
    inserted_ids,
    project_to_simplex,
    require_one_vocabulary,
)
from eraselab.errors import EraselabError
from eraselab.generate import generate_images
from eraselab.models.conditioning import UNetCondition, micro_conditioning, text_encoders, tokenizers
from eraselab.sampling import prediction_target

THREAT_MODEL = "white-box-gradients"


@dataclass(frozen=True)
class UnlearnDiffConfig:
    tokens: int = 5  # k adversarial tokens, prepended
    iterations: int = 40  # gradient steps (the budget)
    lr: float = 0.01
    timesteps_per_step: int = 1  # 1: the paper's schedule; more: that many timesteps in one batched UNet call
    check_every: int = 1
    target_seed: int = 1000  # the unedited model draws the target image at this seed
    oracle: str = "tiny"
    oracle_label: str = ""  # empty: derived from the concept on the tiny model
    oracle_seeds: tuple[int, ...] = (1000, 1001)
    oracle_rule: str = "all"  # stop when every oracle seed shows the concept (or "any")
    seed: int = 0  # initial tokens and the noise of every step

    tiny_overrides: ClassVar[dict] = {"lr": 0.1, "iterations": 100, "check_every": 5}


def target_latents(reference_pipe, pairs: list[tuple[str, int]], spec: AttackSpec) -> list[torch.Tensor]:
    """x_0 for each (prompt, seed): the VAE latent (1, 4, h, w) of the unedited model's image, all images generated
    in one batched call (each is the same whatever the batch)."""
    requests = [r for prompt, seed in pairs for r in Replay(prompt).requests([seed], spec.steps, spec.guidance)]
    vae, latents = reference_pipe.vae, []
    for image in generate_images(reference_pipe, requests, progress=False):
        pixels = reference_pipe.image_processor.preprocess(image).to(reference_pipe.device, vae.dtype)
        with torch.no_grad():
            latents.append(vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor)
    return latents


def denoising_loss(pipe, input_embeddings: list[torch.Tensor], latent: torch.Tensor, timesteps: list[int],
                   noises: torch.Tensor, batched: bool = True,
                   input_ids: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Mean over ``timesteps`` of || eps_theta(x_t | P) - eps ||^2 (Eq. 3): one batched UNet call, or one call
    per timestep with the same mean (the reference schedule). P is given as input embeddings (1, T, C) for each
    text encoder (SDXL: two, with ``input_ids`` for where its pooled text is read). On a v-prediction model the
    target is the velocity (:func:`eraselab.sampling.prediction_target`), the quantity its UNet predicts."""
    height, width = (side * pipe.vae_scale_factor for side in latent.shape[-2:])

    def one(ts: list[int], eps: torch.Tensor) -> torch.Tensor:
        t = torch.tensor(ts, device=latent.device)
        clean = latent.expand(len(ts), -1, -1, -1)
        noisy = pipe.scheduler.add_noise(clean, eps, t)  # x_t
        context, pooled = condition_with_embeddings(text_encoders(pipe), input_ids or [], input_embeddings)
        condition = UNetCondition(context, pooled, micro_conditioning(pipe, height, width, 1, context))
        predicted = pipe.unet(noisy, t, **condition.expand(len(ts)).unet_kwargs()).sample
        target = prediction_target(pipe.scheduler, clean, eps, t)  # Eq. 3's eps (v on v-prediction models)
        return F.mse_loss(predicted, target, reduction="none").mean(dim=(1, 2, 3)).sum()

    if batched:
        return one(timesteps, noises) / len(timesteps)
    return sum(one([t], noises[i:i + 1]) for i, t in enumerate(timesteps)) / len(timesteps)


def typed_prompt(words: dict[int, str], relaxed: torch.Tensor, candidates: torch.Tensor, prompt: str) -> str:
    """Each relaxed token's most likely word, then the prompt."""
    return " ".join([*(words[int(i)] for i in candidates[relaxed.argmax(-1)]), prompt])


class _RelaxedTokens:
    """One prompt's search: k relaxed tokens before it, Adam on Eq. 3, the simplex projection after each step."""

    def __init__(self, pipe, config: UnlearnDiffConfig, words: dict[int, str], candidates: torch.Tensor,
                 timesteps: list[int], prompt: str, latent: torch.Tensor, index: int) -> None:
        self.pipe, self.config, self.words, self.candidates = pipe, config, words, candidates
        self.timesteps, self.prompt, self.latent = timesteps, prompt, latent
        self.encoders = text_encoders(pipe)
        self.input_ids = [tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length,
                                    truncation=True, return_tensors="pt").input_ids.to(pipe.device)
                          for tokenizer in tokenizers(pipe)]
        self.relaxed_ids = [inserted_ids(ids, config.tokens) for ids in self.input_ids]  # where SDXL pools the text
        # k relaxed tokens, started at random one-hot rows.
        self.generator = torch.Generator().manual_seed(config.seed * 7919 + index)
        start_ids = torch.randint(len(candidates), (config.tokens,), generator=self.generator)
        self.relaxed = F.one_hot(start_ids, len(candidates)).float()[None].to(pipe.device).requires_grad_(True)
        self.optimizer = torch.optim.Adam([self.relaxed], lr=config.lr)

    def step(self, step: int, cost: Cost) -> float:
        # Timesteps in sequence along the schedule; fresh seeded noise for each.
        first, per_step = step * self.config.timesteps_per_step, self.config.timesteps_per_step
        ts = [self.timesteps[(first + j) % len(self.timesteps)] for j in range(per_step)]
        noises = torch.randn((len(ts), *self.latent.shape[1:]), generator=self.generator)
        noises = noises.to(self.pipe.device, self.latent.dtype)
        full = torch.zeros(1, self.config.tokens, len(self.pipe.tokenizer), device=self.pipe.device)
        full = full.index_copy(2, self.candidates, self.relaxed)
        embeddings = [insert_relaxed_tokens(encoder, ids, full)  # one z, each encoder's own table (SDXL: two)
                      for encoder, ids in zip(self.encoders, self.input_ids, strict=True)]
        loss = denoising_loss(self.pipe, embeddings, self.latent, ts, noises, input_ids=self.relaxed_ids)  # Eq. 3
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            self.relaxed.copy_(project_to_simplex(self.relaxed))  # back onto the simplex
        cost.unet_evals += len(ts)
        cost.text_encoder_evals += 1
        return round(loss.item(), 5)

    def typed(self) -> str:
        return typed_prompt(self.words, self.relaxed.detach()[0], self.candidates, self.prompt)


def attack(target_pipe, spec: AttackSpec, config: UnlearnDiffConfig, reference_pipe=None) -> AttackResult:
    start = time.perf_counter()
    require_one_vocabulary(text_encoders(target_pipe), "unlearndiff relaxes tokens", len(target_pipe.tokenizer))
    check_budget(config.iterations, "iterations")
    check_budget(config.tokens, "tokens")
    if reference_pipe is None:
        raise EraselabError("unlearndiff needs the unedited model to draw its target images (the reference model)")
    oracle = StopOracle("unlearndiff", target_pipe, spec.concept, config.oracle, config.oracle_label,
                        config.oracle_seeds, config.oracle_rule, guard=spec.guard)
    words = whole_word_tokens(target_pipe.tokenizer)  # the typed prompt must re-tokenise to the tokens optimised
    candidates = torch.tensor(sorted(words), device=target_pipe.device)
    target_pipe.scheduler.set_timesteps(spec.steps, device=target_pipe.device)
    timesteps = target_pipe.scheduler.timesteps.tolist()
    for module in (target_pipe.unet, *text_encoders(target_pipe)):
        module.requires_grad_(False)
    cost = Cost()
    # The targets: the unedited model's image of each prompt.
    targets = target_latents(reference_pipe, [(prompt, config.target_seed) for prompt in spec.prompts], spec)
    cost.unet_evals += len(targets) * spec.steps * 2

    def search(index: int, prompt: str) -> _RelaxedTokens:
        return _RelaxedTokens(target_pipe, config, words, candidates, timesteps, prompt, targets[index], index)

    replays, searched = search_prompts("unlearndiff", target_pipe, spec, oracle, config.iterations,
                                       config.check_every, search, cost)
    cost.seconds = round(time.perf_counter() - start, 3)
    return AttackResult("unlearndiff", THREAT_MODEL, asdict(config), replays, cost, oracle=oracle.record(),
                        details={"search": searched})


def evaluations(config: UnlearnDiffConfig, prompts: int, steps: int) -> tuple[int, int]:
    """At most: each prompt's target image (a guided trajectory of the unedited model), then its search (one
    encoding and ``timesteps_per_step`` UNet rows a step, the oracle every ``check_every`` steps)."""
    unet, text = search_evaluations(config.iterations, config.check_every, len(config.oracle_seeds), steps,
                                    (config.timesteps_per_step, 1))
    return prompts * (steps * 2 + unet), prompts * text


ATTACK = AttackEntry(attack, UnlearnDiffConfig, THREAT_MODEL, reads="model", space="typed-text",
                     evaluations=evaluations)
