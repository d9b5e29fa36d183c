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

On SDXL (beyond the paper, whose code is SD 1.4's) both text encoders train, their transformer layers and final
norms (the second encoder's text projection, and both token tables, stay frozen); the prefix is one embedding in
each encoder's input space, and the pooled text is read at the end token the prefix moved, as
:func:`~eraselab.attack.soft_prompt.condition_with_embeddings` reads it. x_t, the targets and the retain term use
the pipeline's own conditioning (:func:`~eraselab.models.conditioning.guidance_conditions`: the pooled text, the
micro-conditioning of the default size, zeros for "" where SDXL base asks). The defaults are the paper's.

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

from eraselab.attack.soft_prompt import (
    condition_with_embeddings,
    insert_embeddings,
    inserted_ids,
    require_one_vocabulary,
    token_embeddings,
)
from eraselab.erase.artifact import Edit
from eraselab.erase.cross_attention_edit import check_spec_words
from eraselab.erase.finetune import FineTune, LoopSettings, copy_for_training, frozen_weights
from eraselab.erase.registry import MethodEntry
from eraselab.erase.spec import EraseSpec
from eraselab.errors import EraselabError
from eraselab.models import pipeline_fingerprint
from eraselab.models.conditioning import (
    UNetCondition,
    guidance_conditions,
    micro_conditioning,
    text_encoders,
    tokenizers,
)
from eraselab.sampling import sample_until, training_sampler

ATTACKS = ("pgd", "fast-at")
ENCODERS = ("text_encoder", "text_encoder_2")  # the pipeline's names, which the Edit's tensor names begin with
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


def text_encoder_parameters(text_encoders: torch.nn.Module) -> list[str]:
    """What AdvUnlearn trains: the transformer layers and the final layer norm (not the embeddings, nor SDXL's text
    projection) of ``text_encoders``: one text encoder, or the ModuleDict of a pipeline's (its names then begin with
    the pipeline's component name, as the Edit's do)."""
    names = [n for n, _ in text_encoders.named_parameters()  # "...encoder.layers.0..." (or "text_model.encoder...")
             if ".encoder.layers." in f".{n}" or "final_layer_norm" in n]
    if not names:
        raise EraselabError("this text encoder has no transformer layers (encoder.layers) for AdvUnlearn to train")
    return names


def pipeline_encoders(pipe) -> torch.nn.ModuleDict:
    """The pipeline's text encoders by component name (SD: ``text_encoder``; SDXL: and ``text_encoder_2``)."""
    encoders = text_encoders(pipe)
    return torch.nn.ModuleDict(dict(zip(ENCODERS[:len(encoders)], encoders, strict=True)))


class _Setting:
    """What one run shares: the frozen UNet, the original and trained text encoders, the prompts, the sampler."""

    def __init__(self, pipe, trained: torch.nn.ModuleDict, config: AdvUnlearnConfig, prompts: list[str],
                 retain: list[str]) -> None:
        self.pipe, self.unet, self.config = pipe, pipe.unet, config
        self.encoders = list(trained.values())
        self.scheduler = training_sampler(pipe, config.ddim_steps)  # stateless between steps, as ESD's
        device = pipe.device
        self.ids = {p: [tokenizer(p, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                                  return_tensors="pt").input_ids.to(device) for tokenizer in tokenizers(pipe)]
                    for p in {*prompts, *retain}}
        with torch.no_grad():  # each prompt on its own (a batched encoding may round differently)
            self.original = {p: guidance_conditions(pipe, [p])[0] for p in {*prompts, *retain}}
            self.original[""] = guidance_conditions(pipe, [""])[1]  # the unconditional prediction's (SDXL: zeros)
        self.size = pipe.unet.config.sample_size * pipe.vae_scale_factor  # the images x_t is drawn for
        self.shape = (1, self.unet.config.in_channels, self.unet.config.sample_size, self.unet.config.sample_size)

    def original_of(self, prompts: list[str]) -> UNetCondition:
        return UNetCondition.cat([self.original[p] for p in prompts])

    def point(self, prompts: list[str], g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """x_t drawn by the original model under each prompt to one random DDIM step, and that step's t."""
        stop = int(torch.randint(self.config.ddim_steps, (1,), generator=g))
        noise = torch.randn((len(prompts), *self.shape[1:]), generator=g).to(self.pipe.device, self.unet.dtype)
        x_t = sample_until(self.unet, self.scheduler, noise, self.original_of(prompts),
                           self.original[""].expand(len(prompts)), self.config.start_guidance, stop)
        return x_t, self.scheduler.timesteps[stop]

    def condition(self, prompts: list[str], prefix: list[torch.Tensor] | None = None) -> UNetCondition:
        """E_theta([prefix; prompt]) for one prompt, or E_theta(prompt) for each, through the trained encoders
        (``prefix``: one (1, k, C) tensor per encoder). Typed tokens go in as their embeddings: the encoder's own
        forward, bit for bit."""
        ids = [torch.cat([self.ids[p][k] for p in prompts]) for k in range(len(self.encoders))]
        if prefix is None:
            embeddings = [token_embeddings(e)[i] for e, i in zip(self.encoders, ids, strict=True)]
        else:
            embeddings = [insert_embeddings(e, i, d) for e, i, d in zip(self.encoders, ids, prefix, strict=True)]
            ids = [inserted_ids(i, prefix[0].shape[1]) for i in ids]  # the end token the prefix moved
        context, pooled = condition_with_embeddings(self.encoders, ids, embeddings)
        return UNetCondition(context, pooled, micro_conditioning(self.pipe, self.size, self.size, len(prompts),
                                                                 context))

    def eps(self, x_t: torch.Tensor, t: torch.Tensor, condition: UNetCondition) -> torch.Tensor:
        return self.unet(x_t, t, **condition.unet_kwargs()).sample

    def inner_attack(self, prompt: str, prefix: list[torch.Tensor], g: torch.Generator) -> list[torch.Tensor]:
        """The soft prefix (one tensor per encoder) that makes the trained encoders give back the original's
        prediction for ``prompt``."""
        prefix = [d.detach().clone().requires_grad_(True) for d in prefix]
        optimizer = torch.optim.Adam(prefix, lr=self.config.attack_lr)
        for _ in range(1 if self.config.attack == "fast-at" else self.config.attack_steps):
            x_t, t = self.point([prompt], g)
            with torch.no_grad():
                target = self.eps(x_t, t, self.original[prompt])  # eps_o(x_t | c)
            loss = F.mse_loss(self.eps(x_t, t, self.condition([prompt], prefix)), target)  # L_atk
            grads = torch.autograd.grad(loss, prefix)  # the encoders' own gradients stay untouched
            for d, grad in zip(prefix, grads, strict=True):
                d.grad = grad.sign() if self.config.attack == "fast-at" else grad
            optimizer.step()
        return [d.detach() for d in prefix]


def erase(pipe, spec: EraseSpec, config: AdvUnlearnConfig, progress: bool = True,
          stop_after: int | None = None) -> Edit | None:
    """Train a copy of the pipeline's text encoder(s) (``pipe`` is not changed); ``stop_after`` as ESD's."""
    start = time.perf_counter()
    config.check()
    if any(a for a in spec.anchors):
        raise EraselabError("AdvUnlearn erases towards the unconditional prediction (ESD's target); it takes no anchor")
    prompts = [target for target, _ in check_spec_words(pipe, spec)]
    retain = spec.preserved() if config.preserve_weight > 0 else []
    original = pipeline_encoders(pipe)
    require_one_vocabulary(original.values(), "AdvUnlearn draws its first prefix's words")
    with frozen_weights(pipe.unet), frozen_weights(original):
        trained = copy_for_training(original, text_encoder_parameters(original))  # embeddings shared
        return _train(pipe, trained, original, spec, config, prompts, retain, start, progress, stop_after)


def _train(pipe, trained: torch.nn.ModuleDict, original: torch.nn.ModuleDict, spec: EraseSpec,
           config: AdvUnlearnConfig, prompts: list[str], retain: list[str], start: float, progress: bool,
           stop_after: int | None) -> Edit | None:
    setting = _Setting(pipe, trained, config, prompts, retain)
    identity = {"advunlearn": asdict(config) | {"checkpoint": None}, "spec": asdict(spec),
                "base": pipeline_fingerprint(pipe)}
    loop = FineTune(trained, text_encoder_parameters(trained), config.loop(), identity, "AdvUnlearn",
                    original=original)
    if loop.processes > 1:  # each step's adversary starts from the last one's: a sequence no split can share
        raise EraselabError("AdvUnlearn runs in one process (its inner attack carries the adversarial prefix from "
                            "step to step); launch it without torchrun / accelerate launch")
    vocabularies = [token_embeddings(encoder).detach() for encoder in original.values()]
    keys = [f"prefix{'' if i == 0 else f'_{i + 1}'}" for i in range(len(vocabularies))]  # checkpointed tensors

    def step(s: int, g: torch.Generator) -> torch.Tensor:
        prompt = prompts[int(torch.randint(len(prompts), (1,), generator=g))]
        prefix = None
        if s >= config.warmup:  # the inner attack: from the last round's prefix, or from random words
            if config.attack_init == "random" or keys[0] not in loop.state:
                words = torch.randint(len(vocabularies[0]), (config.attack_tokens,), generator=g)
                for key, table in zip(keys, vocabularies, strict=True):
                    loop.state[key] = table[words.to(table.device)][None].clone()
            prefix = setting.inner_attack(prompt, [loop.state[key] for key in keys], g)
            loop.state.update(zip(keys, prefix, strict=True))
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
    return Edit(dict(result), manifest)  # names as the pipeline's: text_encoder(_2).<parameter>


METHOD = MethodEntry(erase, AdvUnlearnConfig)
