"""How generation requests become pipeline calls: the determinism policy (no model code, so configs can import it).

Why a policy at all: a CPU runs an image's arithmetic through kernels chosen by the call's shape (BLAS and oneDNN
pick other kernels, so other summation orders, for other row counts) and splits each tensor between threads at
offsets that depend on the shape and the thread count (an element at a split is computed by a scalar tail loop
whose ``erf`` or ``exp`` differs from the vectorised one in the last bit). Measured on the tiny model: calls of 4
and 8 requests gave images 1/255 apart on an Intel Xeon at 2 threads and on AMD EPYC at 1 thread; calls of one
shape gave images 1/255 apart by the request's row in the call on AMD EPYC at 3 and 7 threads. So a request's
image is the same whatever the other requests only when it is computed in a call of the same shape **at the same
row**: that is what ``fixed_shape`` does.

The policy (``fixed_shape=None``, the default, resolved per model by :meth:`Batching.resolved`): fixed shape on
the CPU for small models (the tiny world, the micro models of the tests: a UNet under ``SMALL_UNET`` parameters),
where padding is cheap and every number in the tests and tables must hold on any CPU; calls at the requested batch
size, unpadded, on accelerators and for large models (SD-1.4's 860 M-parameter UNet and up), where a padded lone
image cost 3.2x plain diffusers' wall time on the CPU. ``fixed_shape=True`` or ``False`` overrides it (CLI
``--fixed-batch-shape/--no-fixed-batch-shape``, YAML ``fixed_batch_shape``); what was used is recorded with the
images.

>>> batching = Batching(size=4)
>>> [batching.slot("a red star", seed) for seed in range(6)]
[0, 1, 2, 3, 0, 1]
>>> list(batching.calls([0, 1, 2, 3, 0, 1]))
[[0, 1, 2, 3], [4, 5, None, None]]
>>> list(Batching(size=4, fixed_shape=False).calls([0, 1, 2, 3, 0, 1]))
[[0, 1, 2, 3], [4, 5]]
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

from eraselab.errors import EraselabError


@dataclass(frozen=True)
class Batching:
    """How requests become pipeline calls.

    ``fixed_shape`` (the default): every call has exactly ``size`` rows and each request always takes the same
    row, its slot (:meth:`slot`: its seed plus a checksum of its prompt, modulo ``size``); rows no request takes
    are padding (a copy of a request of the call, its image dropped). A request is then computed by the same
    kernels on the same elements whatever the other requests and their order, so its image is bit-identical for
    the same ``size`` on any CPU (at a given thread count). The price is padding: a lone request costs ``size``
    rows, and a batch costs as many calls as its fullest slot holds requests (consecutive seeds of one prompt fill
    consecutive slots, so grids of prompts x seeds pack well).

    ``fixed_shape=False``: calls of up to ``size`` requests in the order given, no padding (plain diffusers'
    cost); a request's image may then move by float rounding with the other requests of its call.

    ``fixed_shape=None`` (the default): the module's policy, by model and device (:meth:`resolved`); until
    resolved, :meth:`calls` treats it as fixed.

    ``size`` is 8 by default: on the tiny model on a 2-core CPU, calls of 8 reach about 0.8 of the throughput of
    calls of 32 while a lone image costs 8 rows (``benchmarks/generation.py`` prints both)."""

    size: int = 8
    fixed_shape: bool | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 1:
            raise EraselabError(f"batch size must be an integer >= 1, got {self.size!r}")

    def resolved(self, pipe) -> Batching:
        """This batching with ``fixed_shape`` decided for ``pipe`` where it was left to the policy."""
        if self.fixed_shape is not None:
            return self
        return replace(self, fixed_shape=pads_by_default(pipe))

    def slot(self, prompt: str, seed: int) -> int:
        """The row a request takes in every call: consecutive seeds of a prompt take consecutive rows, and the
        prompt's CRC-32 (the same in every process, unlike ``hash``) staggers prompts against each other."""
        return (seed + zlib.crc32(prompt.encode("utf-8"))) % self.size

    def calls(self, slots: Sequence[int]) -> Iterator[list[int | None]]:
        """The calls for requests whose slots are ``slots``: each a list of request indices, one per row; with
        ``fixed_shape``, ``size`` rows with row r holding a request of slot r or ``None`` (padding)."""
        if self.fixed_shape is False:
            for start in range(0, len(slots), self.size):
                yield list(range(start, min(start + self.size, len(slots))))
            return
        queues: list[list[int]] = [[] for _ in range(self.size)]
        for index, slot in enumerate(slots):
            queues[slot].append(index)
        for call in range(max(len(q) for q in queues)):
            yield [q[call] if call < len(q) else None for q in queues]


SMALL_UNET = 100_000_000  # parameters: the tiny world's UNet has 4.3 M, SD-1.4's 860 M, SDXL's 2.6 G


def pads_by_default(pipe) -> bool:
    """The policy: fixed-shape calls on the CPU for a UNet under ``SMALL_UNET`` parameters, unpadded otherwise."""
    small = sum(p.numel() for p in pipe.unet.parameters()) < SMALL_UNET
    return small and pipe.device.type == "cpu"


DEFAULT_BATCHING = Batching()
