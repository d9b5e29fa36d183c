"""The fine-tuning loop every trained eraser runs on (ESD, SafeGen, TRCE stage 2 and AdvUnlearn).

It trains a declared set of parameters of one module with ``accelerate``'s ``Accelerator`` (device placement, mixed
precision, gradient accumulation, gradient clipping; data-parallel when launched with ``accelerate launch``):

- every random draw of optimisation step ``s`` (micro-batch ``m`` of ``accumulation``) comes from one generator
  seeded by ``(seed, s, m)``, handed to the method's step function, so a stopped run resumes to the weights of an
  uninterrupted one, bit for bit;
- a checkpoint (the trained tensors, the optimiser's and the EMA's state, the method's own ``state`` tensors, the
  step) is written every
  ``checkpoint_every`` steps, atomically, as safetensors with a JSON header: no pickle is ever read back.
  (``accelerate``'s ``save_state`` pickles the optimiser and RNG states, hence this format.) A checkpoint made
  with other settings is refused;
- optionally an exponential moving average of the trained parameters (diffusers' ``EMAModel``), whose weights are
  the result; optionally gradients that are never zeroed, summed over the whole run (``keep_gradients``: the
  official TRCE code's behaviour, which a reproduction needs; the checkpoint then carries them too);
- after training it checks that nothing outside the declared set changed, and returns exactly the tensors of the
  set that did.

Data parallel (``torchrun`` / ``accelerate launch`` with N processes): an optimisation step is N x ``accumulation``
micro-batches, process ``r`` computing micro-batches ``r * accumulation ...``; the gradients are averaged over the
processes (an all-reduce) before clipping and the optimiser step, so every process holds the same weights and the
result equals one process with ``accumulation`` N times larger, within float tolerance (the same random streams;
only the summation order differs). The main process alone writes checkpoints; every process resumes from them.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from eraselab.errors import EraselabError

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
CHECKPOINT = "finetune-checkpoint.safetensors"


@dataclass(frozen=True)
class LoopSettings:
    """How a trained eraser optimises (its config supplies these; the defaults are no method's)."""

    iterations: int
    lr: float
    seed: int = 0
    optimizer: str = "adam"  # adam (ESD's reference) or adamw
    weight_decay: float = 0.0
    accumulation: int = 1  # micro-batches per optimisation step, per process (data-parallel: x processes)
    clip: float | None = None  # max gradient norm
    ema_decay: float | None = None  # an EMA of the trained parameters, whose weights are the result
    mixed_precision: str = "no"  # no, fp16, bf16 (accelerate's)
    checkpoint: str | None = None  # directory to save progress in and resume from
    checkpoint_every: int = 50
    keep_gradients: bool = False  # never zero the gradients: each step adds to the sum of every earlier one

    def check(self) -> None:
        if self.iterations < 1 or self.accumulation < 1 or self.checkpoint_every < 1:
            raise EraselabError("iterations, accumulation and checkpoint_every must be at least 1")
        if self.optimizer not in OPTIMIZERS:
            raise EraselabError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.clip is not None and self.clip <= 0:
            raise EraselabError(f"clip must be a positive gradient norm, got {self.clip}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise EraselabError(f"ema_decay must lie in (0, 1), got {self.ema_decay}")


@contextmanager
def frozen_weights(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``module`` with ``requires_grad`` off on every parameter for the duration (no gradient is ever computed for
    the model a trained eraser reads from, or for the weights its copy shares with it), as it was afterwards."""
    flags = {name: p.requires_grad for name, p in module.named_parameters()}
    module.requires_grad_(False)
    try:
        yield module
    finally:
        for name, p in module.named_parameters():
            p.requires_grad_(flags[name])


def copy_for_training(module: torch.nn.Module, own: list[str]) -> torch.nn.Module:
    """A copy of ``module`` (in train mode) whose ``own`` parameters are copies and whose every other parameter is
    ``module``'s own tensor, shared: a trained eraser then holds one model and a copy of what it trains, not two
    models (SD-1.4's UNet is 3.4 GB in float32, SDXL's 10.3 GB). The shared weights must stay frozen (use it under
    :func:`frozen_weights`); the loop trains only its declared set, and nothing else writes them."""
    own_names = set(own)
    shared = {id(p): p for name, p in module.named_parameters() if name not in own_names}
    return copy.deepcopy(module, memo=shared).train()  # deepcopy's memo: those objects are taken as they are


def _digest(tensor: torch.Tensor) -> bytes:
    """The exact bytes of ``tensor``, hashed: what a shared weight is compared by (no copy of it is kept)."""
    data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    return hashlib.blake2b(data, digest_size=16).digest()


def step_generator(seed: int, step: int, micro: int = 0, accumulation: int = 1) -> torch.Generator:
    """The one random stream of micro-batch ``micro`` of step ``step`` (with one micro-batch a step: the stream
    ESD has always used, so its edits did not change when it moved onto this loop)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step * accumulation + micro)


class FineTune:
    """Train ``trainable`` (parameter names of ``module``) with ``settings``; ``identity`` (JSON-able: the method's
    settings, its spec, the base model's fingerprint) ties a checkpoint to the run that wrote it. ``original``, the
    module ``module`` was copied from (left untouched), is what the result is compared with; without it the loop
    keeps a copy of every parameter (at SD size, 3.4 GB more). The weights ``module`` shares with ``original``
    (:func:`copy_for_training`) are compared by a hash of their bytes taken at the start. ``preset`` names frozen
    parameters the method set on the copy before training (TRCE's stage-1 keys and values): they are compared
    with their values at the start instead."""

    def __init__(self, module: torch.nn.Module, trainable: list[str], settings: LoopSettings, identity: dict,
                 name: str, original: torch.nn.Module | None = None, preset: tuple[str, ...] = ()) -> None:
        from accelerate import Accelerator

        settings.check()
        self.settings, self.name = settings, name
        self.accelerator = Accelerator(mixed_precision=settings.mixed_precision,
                                       gradient_accumulation_steps=settings.accumulation,
                                       cpu=next(module.parameters()).device.type == "cpu")
        params = dict(module.named_parameters())
        unknown = sorted(set(trainable) - set(params))
        if unknown or not trainable:
            raise EraselabError(f"{name}: no such parameters to train: {', '.join(unknown[:3]) or '(none given)'}")
        half = sorted({str(params[n].dtype).removeprefix("torch.") for n in trainable} - {"float32"})
        if half:  # Adam's small steps round away on 16-bit weights (on tiny: 96% of ESD's, silently)
            raise EraselabError(f"{name} trains float32 weights, and this model's are {half[0]}: most updates would "
                                "round away. Load it with --dtype float32 (the edit then applies to a half-precision "
                                "pipeline as to any other)")
        self.module, self.names = module, list(trainable)
        self.before = (dict(original.named_parameters()) if original is not None  # what changed is checked at the end
                       else {n: p.detach().clone() for n, p in params.items()})
        self.before |= {n: params[n].detach().clone() for n in preset}
        self.shared = {n: _digest(p) for n, p in params.items()  # the weights a copy_for_training shares with
                       if n not in self.names and p is self.before.get(n)}  # ``original``: same tensor, no copy
        module.requires_grad_(False)
        self.params = [params[n] for n in self.names]
        for p in self.params:
            p.requires_grad_(True)
        optimizer = OPTIMIZERS[settings.optimizer](self.params, lr=settings.lr, weight_decay=settings.weight_decay)
        self.optimizer = self.accelerator.prepare(optimizer)
        self.ema = None
        if settings.ema_decay is not None:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(self.params, decay=settings.ema_decay)
        self.processes, self.rank = self.accelerator.num_processes, self.accelerator.process_index
        self.micro_batches = settings.accumulation * self.processes  # of one optimisation step, over all processes
        loop = asdict(settings) | {"checkpoint": None, "accumulation": self.micro_batches}  # the global batch
        self.identity = json.loads(json.dumps({**identity, "loop": loop,
                                               "trained": self.names}, sort_keys=True, default=str))
        self.state: dict[str, torch.Tensor] = {}  # the method's own training state (AdvUnlearn's adversary)
        self.directory = Path(settings.checkpoint) if settings.checkpoint else None
        self.first = self._resume() if self.directory else 0

    # -- checkpoints ---------------------------------------------------------------------------------------------
    def _save(self, step: int) -> None:
        if not self.accelerator.is_main_process:
            return
        state = self.optimizer.optimizer.state_dict()
        tensors = {f"param.{n}": p.detach().cpu().contiguous() for n, p in zip(self.names, self.params, strict=True)}
        for index, entries in state["state"].items():
            for key, value in entries.items():
                tensors[f"optim.{index}.{key}"] = value.detach().cpu().contiguous()
        tensors |= {f"state.{k}": v.detach().cpu().contiguous() for k, v in self.state.items()}
        if self.settings.keep_gradients:
            tensors |= {f"grad.{n}": p.grad.detach().cpu().contiguous()
                        for n, p in zip(self.names, self.params, strict=True) if p.grad is not None}
        header = {"step": step, "identity": self.identity, "param_groups": state["param_groups"]}
        if self.ema is not None:
            ema = self.ema.state_dict()
            tensors |= {f"ema.{i}": t.detach().cpu().contiguous() for i, t in enumerate(ema.pop("shadow_params"))}
            header["ema"] = ema
        self.directory.mkdir(parents=True, exist_ok=True)
        partial = self.directory / (CHECKPOINT + ".partial")
        save_file(tensors, partial, metadata={"eraselab": json.dumps(header, default=float)})
        partial.replace(self.directory / CHECKPOINT)  # atomic: a kill never leaves half a checkpoint

    def _resume(self) -> int:
        path = self.directory / CHECKPOINT
        if not path.is_file():
            return 0
        with safe_open(path, "pt") as handle:
            header = json.loads(handle.metadata()["eraselab"])
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        if header["identity"] != self.identity or any(f"param.{n}" not in tensors for n in self.names):
            raise EraselabError(f"{self.directory} holds a run of {self.name} with other settings; use another "
                                "checkpoint directory")
        with torch.no_grad():
            for n, p in zip(self.names, self.params, strict=True):
                p.copy_(tensors[f"param.{n}"])
                if f"grad.{n}" in tensors:
                    p.grad = tensors[f"grad.{n}"].to(p.device, p.dtype)
        self.state = {key[len("state."):]: value for key, value in tensors.items() if key.startswith("state.")}
        state: dict = {"state": {}, "param_groups": header["param_groups"]}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, index, name = key.split(".", 2)
                state["state"].setdefault(int(index), {})[name] = value
        self.optimizer.optimizer.load_state_dict(state)
        if self.ema is not None:
            shadow = [tensors[f"ema.{i}"] for i in range(len(self.params))]
            self.ema.load_state_dict({**header["ema"], "shadow_params": shadow})
        return int(header["step"])

    # -- the loop ------------------------------------------------------------------------------------------------
    def run(self, step_fn: Callable[[int, torch.Generator], torch.Tensor], progress: bool = True,
            stop_after: int | None = None) -> dict[str, torch.Tensor] | None:
        """Optimise from the checkpoint (or step 0) to ``settings.iterations``; ``step_fn(step, generator)`` returns
        one micro-batch's loss. Returns the trained tensors that changed (the EMA's, with one), or None when
        ``stop_after`` steps are done (after their checkpoint), as a kill would leave the run."""
        settings, accelerator = self.settings, self.accelerator
        bar = tqdm(range(self.first, settings.iterations), desc=self.name, unit="it",
                   disable=not progress or not accelerator.is_main_process,
                   initial=self.first, total=settings.iterations)
        self.last_loss = float("nan")
        first = self.rank * settings.accumulation  # this process's first micro-batch of each step
        for step in bar:
            for micro in range(first, first + settings.accumulation):
                with accelerator.accumulate(self.module):
                    with accelerator.autocast():
                        loss = step_fn(step, step_generator(settings.seed, step, micro, self.micro_batches))
                    accelerator.backward(loss)
                    if self.processes > 1 and accelerator.sync_gradients:
                        self._average_gradients()
                    if settings.clip is not None and accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(self.params, settings.clip)
                    self.optimizer.step()
                    if not settings.keep_gradients:
                        self.optimizer.zero_grad(set_to_none=True)
            if self.ema is not None:
                self.ema.step(self.params)
            self.last_loss = float(loss.detach())
            bar.set_postfix(loss=f"{self.last_loss:.4f}")
            done = step + 1
            if self.directory and (done % settings.checkpoint_every == 0 or done in (settings.iterations, stop_after)):
                self._save(done)
            if done == stop_after:
                bar.close()
                return None
        bar.close()
        return self._result()

    def _average_gradients(self) -> None:
        """The mean of every process's gradient, on every process (the trained set is a subset of a module that
        is never wrapped in DistributedDataParallel, so the loop all-reduces it itself)."""
        for p in self.params:
            if p.grad is not None:
                p.grad = self.accelerator.reduce(p.grad, reduction="mean")

    def _result(self) -> dict[str, torch.Tensor]:
        if self.ema is not None:
            self.ema.copy_to(self.params)
        current = dict(self.module.named_parameters())
        moved = sorted(n for n, p in current.items() if n not in self.names and
                       (_digest(p) != self.shared[n] if n in self.shared else not torch.equal(p, self.before[n])))
        if moved:
            raise EraselabError(f"{self.name}: parameters outside the trained set changed: {', '.join(moved[:3])}")
        return {n: current[n].detach().cpu().clone() for n in self.names if not torch.equal(current[n],
                                                                                             self.before[n])}
