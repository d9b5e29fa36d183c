"""Several processes on one run: which share of a grid each process owns, and where they wait for each other.

A run launched by ``torchrun --nproc_per_node N -m eraselab run ...`` or ``accelerate launch --num_processes N -m
eraselab run ...`` (several GPUs, or several nodes) has ``WORLD_SIZE`` set; ``accelerate``'s ``PartialState``
then joins the processes (NCCL on GPUs, gloo on CPUs) and gives each its index and device. Work is split by key: a
cell belongs to process ``hash(key) mod N``, so the split depends only on the key and N, never on what is already
done. A restart with another N therefore finishes whatever is missing, and every process that runs a cell makes
exactly the image one process would (generation is batch-invariant: :mod:`eraselab.batching`).

Without ``WORLD_SIZE`` (a plain ``eraselab run``) nothing is initialised: one process owns every cell.

Where results go: on one node, every process writes into the run's one SQLite store (WAL mode, busy timeout:
SQLite's locking holds between processes of one host). On several nodes, SQLite cannot be shared (its locks and
WAL index do not hold across hosts on a network filesystem), so each node writes its own store in
``OUT/nodes/NODE/`` (:class:`eraselab.node_store.NodeStore`), and the main process merges them into ``OUT`` when
every process is done (and, after a crash, when the run starts again).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from eraselab.store import stable_hash


@dataclass(frozen=True)
class Ranks:
    """This process's place among ``count`` processes (``state``: accelerate's ``PartialState`` when several)."""

    index: int = 0
    count: int = 1
    local: int = 0  # index among the processes of this node (its GPU)
    node: int = 0
    nodes: int = 1
    state: Any = None

    @property
    def main(self) -> bool:
        return self.index == 0

    def owns(self, key: str) -> bool:
        """Whether this process does the work of ``key`` (a cell's request key, an attack cell's name)."""
        return self.count == 1 or int(stable_hash(key)[:15], 16) % self.count == self.index

    def wait(self) -> None:
        """Wait until every process gets here (a barrier); nothing with one process."""
        if self.state is not None:
            self.state.wait_for_everyone()

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Run the block on the main process first, then on the others (binding a run directory, mending it)."""
        if not self.main:
            self.wait()
        yield
        if self.main:
            self.wait()

    def device(self, device: str) -> str:
        """This process's device: ``cuda`` becomes its own GPU (``cuda:LOCAL``); anything else is kept."""
        return f"cuda:{self.local}" if device == "cuda" and self.count > 1 else device


def process_ranks(device: str = "cpu") -> Ranks:
    """This process's :class:`Ranks`: from ``accelerate`` under a launcher that set ``WORLD_SIZE`` above 1, else
    the single process (no process group is made, so plain runs and tests start nothing)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Ranks()
    from accelerate import PartialState

    state = PartialState(cpu=not device.startswith("cuda"))  # gloo on CPUs, NCCL on GPUs
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", state.num_processes))
    node = int(os.environ.get("GROUP_RANK", state.process_index // per_node))  # torchrun's node rank
    return Ranks(state.process_index, state.num_processes, state.local_process_index, node,
                 -(-state.num_processes // per_node), state)
