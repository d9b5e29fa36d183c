"""TRCE: Towards Reliable Malicious Concept Erasure in Text-to-Image Diffusion Models (Chen, Zhang, Wang, Li,
Liu, Wang; ICCV 2025). Stage 1, the closed-form cross-attention edit, then stage 2, contrastive fine-tuning of the
early denoising steps (``stages``: "1,2", the default; "1" or "2" alone for the paper's ablation).

TRCE observes that CLIP's causal text encoder gathers a prompt's meaning into its first [EoT] token, so an
implicit or paraphrased mention of a concept still shows up there. Stage 1 therefore maps the first-[EoT]
embedding of every malicious prompt (each concept in each template) to the first-[EoT] embedding of its safe
counterpart (the same template with the anchor), with lambda = 0 and the preservation statistics of a caption
corpus holding everything else in place (the paper's Eq. 4-5, solved by
:func:`eraselab.erase.closed_form.closed_form_edit`):
    W = (sum_i W0 s_i c_i^T + W0 K) (sum_i c_i c_i^T + K)^-1,  K = s_p sum_p c_p c_p^T + s_c E,
where c_i is a malicious prompt's first [EoT] embedding, s_i the safe counterpart's, and E the corpus's second
moment (:mod:`eraselab.erase.corpus`). lambda = 0 needs K to span the text space, so a corpus is required.

Defaults: the paper's (lambda 0, keys and values edited, the first [EoT] only, corpus_scale 0.1, preserve_scale
0.1); the corpus must be given for real models (a caption file, one caption per line; the paper uses COCO captions)
and is the tiny world's captions on the tiny model. ``positions`` widens the keys beyond the first [EoT]: the
prompt's last word, the [EoT] padding after it, or both ("word-to-padding", the tiny default).

Why the tiny default differs: the tiny UNet also reads the word's own position and the padding, which stage 1
leaves alone by design (the paper leaves the rest to stage 2). Erasing "star" towards "shape" (seeds 100-111, 72
images; the anchor prompts "a red shape", ... themselves give a star in 0.125 of these images, the floor a perfect
mapping reaches) left a star in 0.250 with the first [EoT] only, 0.181 with "eot-and-padding" and 0.139 with
"word-to-padding" (UCE: 0.153).

Stage 2 (Sec. 3.3, and the official training code) starts from the stage-1 model and trains every self-attention
parameter (``attn1``) and the cross-attention queries (``attn2.to_q``); stage 1's keys and values stay frozen. The
original model samples trajectories (guidance 3) from each malicious prompt of the (malicious, safe) pairs, and
unconditional ones; only the early steps are kept (the first ``early_fraction`` of the schedule's timesteps), as
tensors (:mod:`eraselab.erase.trajectories`). At a point x_t of a malicious trajectory, the original model gives
    f+ = eps(x_t, safe) + g (eps(x_t, safe) - eps(x_t, "")),   f- = eps(x_t, mal) + g (eps(x_t, mal) - eps(x_t, "")),
g = 15, and the trained model's predictions for the malicious prompt and for "" are the anchors a of the triplet loss
    L_c = mean_a max(0, ||a - f+||^2 - ||a - f-||^2 + m),   m = 0.01                        (Eq. 7)
(||.||^2 the mean squared difference), plus the regulariser on points of the unconditional trajectories
    L_r = 100 MSE(eps_theta(x_u, ""), eps_stage1(x_u, ""))                                  (Eq. 8)
averaged over ``regularisation_points`` points a step (the official code's 4), each on its own trajectory (step s
reads trajectories 4s..4s+3, cycling) at a step drawn from the whole schedule, not only the early half.
Defaults (SD 1.4, official code): AdamW lr 1e-6, weight decay 0.01, 3 epochs over 20 pairs x 5 trajectories (300
steps of batch 1), 50 sampler steps, early half; 400 unconditional trajectories (the official script samples 2,000
and its loop reads the first 400: 4 for each of the 100 steps of an epoch). The official code never zeroes its
gradients (they add up over the whole run); eraselab does, and ``keep_gradients`` reproduces the official
behaviour. Tiny defaults: see ``tiny_overrides`` and ``docs/tiny-measurements.md``. On SDXL (the paper edits SD
1.4) every prediction carries the pooled text and time ids ``pipe(prompt)`` uses, and "" is the unconditional branch
SDXL base samples with (zero embeddings), in f+, f-, the anchors, Eq. 8 and the unconditional trajectories.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F

from eraselab.erase.artifact import Edit
from eraselab.erase.corpus import check_corpus
from eraselab.erase.cross_attention_edit import check_spec_words, manifest, projections, solve
from eraselab.erase.finetune import FineTune, LoopSettings, copy_for_training, frozen_weights
from eraselab.erase.registry import MethodEntry
from eraselab.erase.spec import EraseSpec
from eraselab.erase.trajectories import early_steps, trajectories
from eraselab.erase.uce import preservation
from eraselab.errors import EraselabError
from eraselab.models import pipeline_fingerprint
from eraselab.models.conditioning import UNetCondition, encode, guidance_conditions


@dataclass(frozen=True)
class TrceConfig:
    lamb: float = 0.0  # lambda of the closed form: 0 in stage 1
    erase_scale: float = 1.0
    preserve_scale: float = 0.1
    edit_keys: bool = True
    corpus: str | None = None  # "tiny" or a caption file (one caption per line); required
    corpus_scale: float = 0.1
    positions: str = "first-eot"  # or "last-word-and-first-eot", "eot-and-padding", "word-to-padding"
    stages: str = "1,2"  # "1", "2" or "1,2"
    # stage 2
    trajectories_per_pair: int = 5
    unconditional_trajectories: int = 400  # the official loop reads 400 of the 2,000 its script samples
    regularisation_points: int = 4  # Eq. 8's points a step (the official regularization_batch_size)
    sampler_steps: int = 50  # of the trajectories' schedule
    trajectory_guidance: float = 3.0
    early_fraction: float = 0.5  # the early steps: this first share of the schedule's timesteps
    guidance: float = 15.0  # g of f+ and f-
    margin: float = 0.01  # m of Eq. 7
    regularisation: float = 100.0  # weight of Eq. 8
    lr: float = 1e-6
    weight_decay: float = 0.01
    epochs: int = 3
    keep_gradients: bool = False  # True: never zero the gradients, as the official code
    trajectories: str | None = None  # safetensors file for the trajectories (sampled again when missing)
    seed: int = 0
    checkpoint: str | None = None
    checkpoint_every: int = 50

    # Stage 2 on tiny keeps the paper's margin 0.01, regulariser x100 and its 4 points a step, with lr 1e-4: it then
    # changes little the tables see. lr 1e-3 or more acts, but costs another colour when red is erased (31.9 to
    # 70.8 points); towards the table's anchor "shape" stage 2 alone does nothing at any of them (that anchor's
    # guidance is half the star's, so Eq. 7 is already met); see docs/tiny-measurements.md.
    tiny_overrides: ClassVar[dict] = {"corpus": "tiny", "positions": "word-to-padding", "sampler_steps": 25,
                                      "lr": 1e-4, "trajectories_per_pair": 2, "unconditional_trajectories": 16}

    def check(self) -> None:
        """What can be refused before a model loads: lambda = 0 needs the corpus to span the text space."""
        if self.stages not in STAGES:
            raise EraselabError(f"trce stages must be one of {', '.join(STAGES)}, got {self.stages!r}")
        if "1" in self.stages:
            check_corpus(self.corpus, "TRCE (lambda = 0)", required=True)
        if min(self.trajectories_per_pair, self.unconditional_trajectories, self.sampler_steps, self.epochs,
               self.regularisation_points) < 1 or \
                not 0 < self.early_fraction <= 1:
            raise EraselabError("trce stage 2: trajectory counts, regularisation_points, sampler_steps and epochs must "
                                "be >= 1, and early_fraction in (0, 1]")

    def loop(self, iterations: int) -> LoopSettings:
        return LoopSettings(iterations=iterations, lr=self.lr, seed=self.seed, optimizer="adamw",
                            weight_decay=self.weight_decay, checkpoint=self.checkpoint,
                            checkpoint_every=self.checkpoint_every, keep_gradients=self.keep_gradients)
    defaults_from: ClassVar[str] = ("TRCE paper (Chen et al., ICCV 2025) and its code: stage 1 lambda 0, first [EoT], "
                                    "scales 0.1; stage 2 AdamW 1e-6, g 15, margin 0.01, 3 epochs, early half")


STAGES = ("1", "2", "1,2")


POSITIONS = ("first-eot", "last-word-and-first-eot", "eot-and-padding", "word-to-padding")


def key_rows(pipe, prompts: list[str], positions: str) -> list[torch.Tensor]:
    """Per prompt, its rows (k, C) at ``positions``: the first [EoT] embedding; with "last-word-and-first-eot" its
    last word's before it; with "eot-and-padding" every position from the first [EoT] to the end (the padding,
    which CLIP also fills with [EoT] tokens and the UNet also reads); "word-to-padding" both."""
    if positions not in POSITIONS:
        raise EraselabError(f"positions must be one of {', '.join(POSITIONS)}, got {positions!r}")
    encoded = encode(pipe, prompts)
    rows = []
    for i, (word, eot) in enumerate(zip(encoded.last_word, encoded.first_eot, strict=True)):
        head = [word] if positions in ("last-word-and-first-eot", "word-to-padding") else []
        tail = range(eot, encoded.hidden.shape[1]) if positions in ("eot-and-padding", "word-to-padding") else [eot]
        rows.append(encoded.hidden[i, [*head, *tail]])
    return rows


def paired_rows(pipe, malicious: list[str], safe: list[str], positions: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The keys c_i and the rows s_i they are mapped to, row for row: each malicious prompt's rows with its safe
    counterpart's, cut to the shorter of the two where the prompts' token lengths differ (the padding tail)."""
    keys, targets = [], []
    for k, s in zip(key_rows(pipe, malicious, positions), key_rows(pipe, safe, positions), strict=True):
        n = min(len(k), len(s))
        keys.append(k[:n])
        targets.append(s[:n])
    return torch.cat(keys), torch.cat(targets)


def stage_one(pipe, spec: EraseSpec, config: TrceConfig) -> dict[str, torch.Tensor]:
    """Map each malicious prompt's first [EoT] embedding (and the other ``positions``) to its safe counterpart's."""
    pairs = check_spec_words(pipe, spec)
    keys, safe = paired_rows(pipe, [t for t, _ in pairs], [a or " " for _, a in pairs], config.positions)  # c_i, s_i
    preserve, stats = preservation(pipe, spec, config.corpus, keep_empty=False)  # the reference keeps its corpus only
    return solve(projections(pipe, config.edit_keys), keys, safe, preserve, config.preserve_scale,  # Eq. 4-5
                 stats, config.corpus_scale, config.lamb, config.erase_scale)


def contrastive_loss(anchors: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                     margin: float) -> torch.Tensor:
    """Eq. 7: mean over the anchors of max(0, ||a - f+||^2 - ||a - f-||^2 + margin), ||.||^2 a mean square."""
    return torch.stack([torch.relu(F.mse_loss(a, positive) - F.mse_loss(a, negative) + margin)
                        for a in anchors]).mean()


def guided_targets(original, x: torch.Tensor, t, safe: UNetCondition, malicious: UNetCondition,
                   empty: UNetCondition, guidance: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 7's f+ and f- at the point (x, t), from the original model's predictions for the safe prompt, the
    malicious one and "" (their conditionings)."""
    with torch.no_grad():
        e_safe, e_mal, e_empty = original(x.expand(3, -1, -1, -1), t, **UNetCondition.cat(
            [safe, malicious, empty]).unet_kwargs()).sample.chunk(3)
    return e_safe + guidance * (e_safe - e_empty), e_mal + guidance * (e_mal - e_empty)  # f+, f-


def stage_two_parameters(unet) -> list[str]:
    """What stage 2 trains: every self-attention parameter and the cross-attention queries."""
    return [n for n, _ in unet.named_parameters() if ".attn1." in n or ".attn2.to_q." in n]


def stage_two(pipe, spec: EraseSpec, config: TrceConfig, stage1: dict[str, torch.Tensor], progress: bool,
              stop_after: int | None) -> dict[str, torch.Tensor] | None:
    """Fine-tune a copy of the UNet (with ``stage1``'s keys and values) on the early steps; the trained tensors that
    changed, or None when stopped after ``stop_after`` steps."""
    pairs = check_spec_words(pipe, spec)  # (malicious, safe) prompts
    malicious, safe = [m for m, _ in pairs], [a or " " for _, a in pairs]
    per, n = config.trajectories_per_pair, len(pairs)
    early = early_steps(config.sampler_steps, config.early_fraction)
    store = Path(config.trajectories) if config.trajectories else \
        Path(config.checkpoint) / "trajectories.safetensors" if config.checkpoint else None  # kept beside progress
    seeds = [config.seed * 7919 + i for i in range(n * per + config.unconditional_trajectories)]
    bad = trajectories(pipe, [m for m in malicious for _ in range(per)], seeds[:n * per], config.sampler_steps,
                       config.trajectory_guidance, early,  # sampled by the original model from the malicious prompts
                       store.with_name(store.stem + "-malicious.safetensors") if store else None, progress)
    plain = trajectories(pipe, [""] * config.unconditional_trajectories, seeds[n * per:], config.sampler_steps, 1.0,
                         config.sampler_steps,  # Eq. 8 regularises the whole schedule, as the official code
                         store.with_name(store.stem + "-unconditional.safetensors") if store else None, progress)
    frozen, device = pipe.unet, pipe.device
    trained, preset = stage_two_parameters(frozen), [name[len("unet."):] for name in stage1]
    unet = copy_for_training(frozen, trained + preset)  # the rest of the UNet is the frozen one's, shared
    with torch.no_grad():
        for name, tensor in stage1.items():
            unet.get_parameter(name[len("unet."):]).copy_(tensor)
    text = {p: guidance_conditions(pipe, [p])[0] for p in {*malicious, *safe}}
    text[""] = guidance_conditions(pipe, [""])[1]  # the unconditional prediction's (SDXL base: zeros)
    reference = copy_for_training(unet, trained).eval()  # Eq. 8's target: the stage-1 model, frozen
    points, steps_u = config.regularisation_points, len(plain.timesteps)
    identity = {"trce": asdict(config) | {"checkpoint": None}, "spec": asdict(spec),
                "base": pipeline_fingerprint(pipe)}
    loop = FineTune(unet, trained, config.loop(config.epochs * n * per), identity, "TRCE stage 2",
                    original=frozen, preset=tuple(preset))

    def step(s: int, g: torch.Generator) -> torch.Tensor:
        epoch, index = divmod(s, n * per)
        item = int(torch.randperm(n * per, generator=torch.Generator().manual_seed(config.seed + epoch))[index])
        k = int(torch.randint(early, (1,), generator=g))
        x, t = bad.inputs[item, k][None].to(device), bad.timesteps[k].to(device)
        mal, ok = malicious[item // per], safe[item // per]
        positive, negative = guided_targets(frozen, x, t, text[ok], text[mal], text[""], config.guidance)
        anchors = unet(x.expand(2, -1, -1, -1), t, **UNetCondition.cat([text[mal], text[""]]).unet_kwargs()).sample
        contrast = contrastive_loss(anchors, positive[0], negative[0], config.margin)
        rows = [(s * points + j) % len(plain.inputs) for j in range(points)]  # step s's trajectories, cycling
        at = torch.randint(steps_u, (points,), generator=g)  # a step of the whole schedule for each
        x_u = torch.stack([plain.inputs[r, int(k)] for r, k in zip(rows, at, strict=True)]).to(device)
        t_u, empty = plain.timesteps[at].to(device), text[""].expand(points).unet_kwargs()
        with torch.no_grad():
            target = reference(x_u, t_u, **empty).sample
        kept = unet(x_u, t_u, **empty).sample
        return contrast + config.regularisation * F.mse_loss(kept, target)  # + Eq. 8, the mean over the points

    trained = loop.run(step, progress, stop_after)
    return None if trained is None else {f"unet.{name}": tensor for name, tensor in trained.items()}


def erase(pipe, spec: EraseSpec, config: TrceConfig, progress: bool = True,
          stop_after: int | None = None) -> Edit | None:
    """TRCE's ``config.stages`` on a copy of ``pipe``'s weights (``pipe`` is not changed); ``stop_after`` as ESD's."""
    start = time.perf_counter()
    config.check()
    tensors = stage_one(pipe, spec, config) if "1" in config.stages else {}
    if "2" in config.stages:
        with frozen_weights(pipe.unet):
            trained = stage_two(pipe, spec, config, tensors, progress, stop_after)
        if trained is None:
            return None
        tensors = {**tensors, **trained}
    return Edit(tensors, manifest("trce", config, spec, pipe, start, stage=config.stages,
                                 seed=config.seed if "2" in config.stages else None))


METHOD = MethodEntry(erase, TrceConfig)
