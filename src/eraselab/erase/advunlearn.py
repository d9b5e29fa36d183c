"""AdvUnlearn: "Defensive Unlearning with Adversarial Training for Robust Concept Erasure in Diffusion Models"
(Zhang, Chen, Jia, Zhang, Liu, Liu; NeurIPS 2024).

AdvUnlearn erases a concept from the **text encoder** (its transformer layers and final layer norm; token and
position embeddings, UNet and VAE frozen) with an attack inside the training loop, the bi-level problem of Eq. 5:
    min_theta  L_ESD(theta, [delta*; c]) + gamma L_retain(theta),   delta* = argmin_delta L_atk(theta, delta).
The inner attack is a soft prefix delta of ``attack_tokens`` embeddings in the text encoder's *input* space, placed
after the start token of the concept prompt c (UnlearnDiffAtk's objective with the original model's prediction as
the target, as the official code optimises it):
    L_atk = || eps(x_t | E_theta([delta; c])) - eps_o(x_t | c) ||^2,
``attack_steps`` Adam steps (``pgd``; each on a fresh x_t), or one step on the gradient's sign (``fast-at``), started
from the previous round's delta (``attack_init = "latest"``) or from random words. The outer step is ESD's
(Gandikota et al., ICCV 2023, Eq. 4-5) on the adversarial prompt,
    L_ESD = || eps(x_t | E_theta([delta*; c])) - (eps_o(x_t) - eta (eps_o(x_t | c) - eps_o(x_t))) ||^2,
plus the utility-retaining term on ``retain_batch`` preserved prompts c~ a step,
    L_retain = || eps(x~_t | E_theta(c~)) - eps_o(x~_t | c~) ||^2,
with x_t sampled by the original model (guidance ``start_guidance``, DDIM) to a random step, as in ESD. During the
first ``warmup`` iterations there is no attack (delta empty). eps is always the frozen UNet: only the text encoder
differs, so the Edit holds text-encoder tensors (plain diffusers applies them with the snippet in docs/erasing.md).

Defaults (SD 1.4, the paper and its official script): 1,000 iterations, warm-up 200, Adam lr 1e-5, eta 1, start
guidance 3, 50 DDIM steps, gamma 0.3 with 5 retain prompts a step, one prefix token, 30 attack steps at lr 1e-3,
``latest`` initialisation. Tiny defaults: ``tiny_overrides`` (what was measured: ``docs/tiny-measurements.md``).
The adversary's delta is part of the training state: checkpoints carry it, so a resumed run is bit-identical.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from eraselab.attack.soft_prompt import encode_with_embeddings, insert_embeddings, token_embeddings
from eraselab.erase.artifact import Edit
from eraselab.erase.cross_attention_edit import check_spec_words
from eraselab.erase.finetune import FineTune, LoopSettings, copy_for_training, frozen_weights
from eraselab.erase.registry import MethodEntry
from eraselab.erase.spec import EraseSpec
from eraselab.errors import EraselabError
from eraselab.models import pipeline_fingerprint
from eraselab.models.conditioning import UNetCondition, require_one_text_encoder
from eraselab.sampling import sample_until, training_sampler

ATTACKS = ("pgd", "fast-at")
INITS = ("latest", "random")


@dataclass(frozen=True)
class AdvUnlearnConfig:
    iterations: int = 1000
    warmup: int = 200  # iterations before the inner attack starts
    lr: float = 1e-5
    negative_guidance: float = 1.0  # eta of ESD's Eq. 4
    start_guidance: float = 3.0
    ddim_steps: int = 50
    preserve_weight: float = 0.3  # gamma
    retain_batch: int = 5  # preserved prompts a step
    attack: str = "pgd"  # or "fast-at": one sign-gradient step
    attack_steps: int = 30  # K
    attack_lr: float = 1e-3
    attack_tokens: int = 1  # length of the soft prefix
    attack_init: str = "latest"  # or "random"
    seed: int = 0
    checkpoint: str | None = None
    checkpoint_every: int = 50

    tiny_overrides: ClassVar[dict] = {"iterations": 200, "warmup": 40, "lr": 1e-4, "ddim_steps": 25,
                                      "attack_steps": 10, "attack_lr": 1e-2, "preserve_weight": 1.0}
    defaults_from: ClassVar[str] = ("AdvUnlearn (Zhang et al., NeurIPS 2024) and its script: 1000 iterations, warm-up "
                                    "200, Adam 1e-5, gamma 0.3, 5 retain prompts, 1 prefix token, 30 steps at 1e-3")

    def check(self) -> None:
        if self.attack not in ATTACKS or self.attack_init not in INITS:
            raise EraselabError(f"advunlearn attack must be one of {', '.join(ATTACKS)} and attack_init one of "
                                f"{', '.join(INITS)}; got {self.attack!r}, {self.attack_init!r}")
        if min(self.iterations, self.attack_steps, self.attack_tokens, self.retain_batch) < 1 or self.ddim_steps < 2:
            raise EraselabError("advunlearn: iterations, attack_steps, attack_tokens and retain_batch must be >= 1, "
                                "ddim_steps >= 2")

    def loop(self) -> LoopSettings:
        return LoopSettings(iterations=self.iterations, lr=self.lr, seed=self.seed, optimizer="adam",
                            checkpoint=self.checkpoint, checkpoint_every=self.checkpoint_every)


def text_encoder_parameters(text_encoder) -> list[str]:
    """What AdvUnlearn trains: the transformer layers and the final layer norm (not the embeddings)."""
    names = [n for n, _ in text_encoder.named_parameters()  # "encoder.layers.0..." (or "text_model.encoder...")
             if ".encoder.layers." in f".{n}" or "final_layer_norm" in n]
    if not names:
        raise EraselabError("this text encoder has no transformer layers (encoder.layers) for AdvUnlearn to train")
    return names


class _Setting:
    """What one run shares: the frozen UNet, the original and trained text encoders, the prompts, the sampler."""

    def __init__(self, pipe, trained, config: AdvUnlearnConfig, prompts: list[str], retain: list[str]) -> None:
        self.pipe, self.unet, self.trained, self.config = pipe, pipe.unet, trained, config
        self.scheduler = training_sampler(pipe, config.ddim_steps)  # stateless between steps, as ESD's
        tokenizer, device = pipe.tokenizer, pipe.device
        self.ids = {p: tokenizer(p, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                                 return_tensors="pt").input_ids.to(device) for p in {*prompts, *retain}}
        with torch.no_grad():
            self.original = {p: pipe.encode_prompt([p], device, 1, False)[0] for p in {*prompts, *retain, ""}}
        self.shape = (1, self.unet.config.in_channels, self.unet.config.sample_size, self.unet.config.sample_size)

    def original_of(self, prompts: list[str]) -> torch.Tensor:
        return torch.cat([self.original[p] for p in prompts])

    def point(self, prompts: list[str], g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """x_t drawn by the original model under each prompt to one random DDIM step, and that step's t."""
        stop = int(torch.randint(self.config.ddim_steps, (1,), generator=g))
        noise = torch.randn((len(prompts), *self.shape[1:]), generator=g).to(self.pipe.device, self.unet.dtype)
        x_t = sample_until(self.unet, self.scheduler, noise, UNetCondition(self.original_of(prompts)),
                           UNetCondition(self.original[""]).expand(len(prompts)), self.config.start_guidance, stop)
        return x_t, self.scheduler.timesteps[stop]

    def condition(self, prompts: list[str], prefix: torch.Tensor | None = None) -> torch.Tensor:
        """E_theta([prefix; prompt]) for one prompt, or E_theta(prompt) for each, through the trained encoder."""
        if prefix is None:
            return self.trained(torch.cat([self.ids[p] for p in prompts]))[0]
        return encode_with_embeddings(self.trained, insert_embeddings(self.trained, self.ids[prompts[0]], prefix))

    def eps(self, x_t: torch.Tensor, t: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return self.unet(x_t, t, encoder_hidden_states=condition).sample

    def inner_attack(self, prompt: str, prefix: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """The soft prefix that makes the trained encoder give back the original's prediction for ``prompt``."""
        prefix = prefix.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([prefix], lr=self.config.attack_lr)
        for _ in range(1 if self.config.attack == "fast-at" else self.config.attack_steps):
            x_t, t = self.point([prompt], g)
            with torch.no_grad():
                target = self.eps(x_t, t, self.original[prompt])  # eps_o(x_t | c)
            loss = F.mse_loss(self.eps(x_t, t, self.condition([prompt], prefix)), target)  # L_atk
            (prefix.grad,) = torch.autograd.grad(loss, [prefix])  # the encoder's own gradients stay untouched
            if self.config.attack == "fast-at":
                prefix.grad = prefix.grad.sign()
            optimizer.step()
        return prefix.detach()


def erase(pipe, spec: EraseSpec, config: AdvUnlearnConfig, progress: bool = True,
          stop_after: int | None = None) -> Edit | None:
    """Train a copy of ``pipe.text_encoder`` (``pipe`` is not changed); ``stop_after`` as ESD's."""
    start = time.perf_counter()
    config.check()
    require_one_text_encoder(pipe, "AdvUnlearn")
    if any(a for a in spec.anchors):
        raise EraselabError("AdvUnlearn erases towards the unconditional prediction (ESD's target); it takes no anchor")
    prompts = [target for target, _ in check_spec_words(pipe, spec)]
    retain = spec.preserved() if config.preserve_weight > 0 else []
    with frozen_weights(pipe.unet), frozen_weights(pipe.text_encoder) as original:
        trained = copy_for_training(original, text_encoder_parameters(original))  # embeddings shared
        return _train(pipe, trained, spec, config, prompts, retain, start, progress, stop_after)


def _train(pipe, trained, spec: EraseSpec, config: AdvUnlearnConfig, prompts: list[str], retain: list[str],
           start: float, progress: bool, stop_after: int | None) -> Edit | None:
    setting = _Setting(pipe, trained, config, prompts, retain)
    identity = {"advunlearn": asdict(config) | {"checkpoint": None}, "spec": asdict(spec),
                "base": pipeline_fingerprint(pipe)}
    loop = FineTune(trained, text_encoder_parameters(trained), config.loop(), identity, "AdvUnlearn",
                    original=pipe.text_encoder)
    if loop.processes > 1:  # each step's adversary starts from the last one's: a sequence no split can share
        raise EraselabError("AdvUnlearn runs in one process (its inner attack carries the adversarial prefix from "
                            "step to step); launch it without torchrun / accelerate launch")
    vocabulary = token_embeddings(pipe.text_encoder).detach()

    def step(s: int, g: torch.Generator) -> torch.Tensor:
        prompt = prompts[int(torch.randint(len(prompts), (1,), generator=g))]
        prefix = None
        if s >= config.warmup:  # the inner attack: from the last round's prefix, or from random words
            if config.attack_init == "random" or "prefix" not in loop.state:
                words = torch.randint(len(vocabulary), (config.attack_tokens,), generator=g)
                loop.state["prefix"] = vocabulary[words.to(vocabulary.device)][None].clone()
            loop.state["prefix"] = prefix = setting.inner_attack(prompt, loop.state["prefix"], g)
        x_t, t = setting.point([prompt], g)
        with torch.no_grad():
            blank, concept = (setting.eps(x_t, t, setting.original[p]) for p in ("", prompt))
            goal = blank - config.negative_guidance * (concept - blank)  # ESD's Eq. 4, on the adversarial prompt
        loss = F.mse_loss(setting.eps(x_t, t, setting.condition([prompt], prefix)), goal)  # Eq. 5
        if retain:
            kept = [retain[int(i)] for i in torch.randint(len(retain), (config.retain_batch,), generator=g)]
            x_r, t_r = setting.point(kept, g)
            with torch.no_grad():
                reference = setting.eps(x_r, t_r, setting.original_of(kept))  # eps_o(x~_t | c~)
            retained = F.mse_loss(setting.eps(x_r, t_r, setting.condition(kept)), reference)
            loss = loss + config.preserve_weight * retained  # + gamma L_retain
        return loss

    result = loop.run(step, progress, stop_after)
    if result is None:
        return None
    manifest = {"method": "advunlearn", "config": asdict(config), "defaults_from": config.defaults_from,
                "concepts": list(spec.concepts), "anchors": [], "preserve": list(spec.preserve),
                "templates": list(spec.templates), "base_fingerprint": pipeline_fingerprint(pipe),
                "seed": config.seed, "final_loss": loop.last_loss, "seconds": round(time.perf_counter() - start, 3)}
    return Edit({f"text_encoder.{n}": tensor for n, tensor in result.items()}, manifest)


METHOD = MethodEntry(erase, AdvUnlearnConfig)
