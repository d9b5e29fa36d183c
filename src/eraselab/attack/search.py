"""The loop every prompt-search attack shares (UnlearnDiffAtk, P4D): per attacked prompt, gradient steps on a
relaxed or continuous prompt, the typed prompt offered to the stop oracle every ``check_every`` steps and at the
last one, an early stop on the oracle's success, and the prompt the oracle rated best as the replay.

An attack supplies a :class:`Search` per prompt (its state: the relaxed tokens, their optimiser, its target) and
the loop does the rest, counting the oracle's generations into the attack's :class:`Cost`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

from eraselab.attack.base import AttackSpec, Cost, Replay, StopOracle, each_prompt


class Search(Protocol):
    def step(self, step: int, cost: Cost) -> float:
        """One optimisation step (its model evaluations counted in ``cost``); returns the loss."""
        ...

    def typed(self) -> str:
        """The prompt as it would be typed now (what the oracle rates and the replay holds)."""
        ...


def search_evaluations(iterations: int, check_every: int, oracle_seeds: int, steps: int,
                       per_step: tuple[int, int]) -> tuple[int, int]:
    """The most (UNet, text-encoder) evaluations :func:`search_prompts` spends on one prompt: ``iterations`` steps
    of ``per_step`` each, and an oracle rating (``oracle_seeds`` images, guided: 2 UNet rows a sampler step, 2
    encodings an image; :meth:`StopOracle.score`) every ``check_every`` steps and at the last."""
    ratings = math.ceil(iterations / check_every)
    return (iterations * per_step[0] + ratings * oracle_seeds * steps * 2,
            iterations * per_step[1] + ratings * oracle_seeds * 2)


def search_prompts(name: str, target_pipe, spec: AttackSpec, oracle: StopOracle, iterations: int,
                   check_every: int, start: Callable[[int, str], Search], cost: Cost,
                   history: int | None = None) -> tuple[list[Replay], list[dict]]:
    """Run ``start(index, prompt)``'s search on every prompt of ``spec``; returns the replays and, per prompt, the
    search's record (typed prompt, loss history, last ``history`` losses if given, when the oracle agreed)."""
    replays, records = [], []
    for index, prompt in each_prompt(enumerate(spec.prompts), name, len(spec.prompts)):
        search = start(index, prompt)
        losses, success_at = [], None
        for step in range(iterations):
            losses.append(search.step(step, cost))
            rated = (step + 1) % check_every == 0 or step + 1 == iterations  # the last step is always rated
            if rated and oracle.offer(target_pipe, search.typed(), prompt, spec.steps, spec.guidance, cost):
                success_at = step + 1
                break
        oracle_rate, text = oracle.take_best()
        replays.append(Replay(prompt, text=text))
        record = {"prompt": prompt, "text": text, "loss": losses if history is None else losses[-history:]}
        if history is not None:
            record["steps"] = len(losses)
        records.append(record | {"oracle_success_at": success_at, "oracle_rate": oracle_rate})
    return replays, records
