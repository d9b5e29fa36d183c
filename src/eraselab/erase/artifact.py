"""The Edit artifact: ``edit.safetensors`` (only the changed tensors) and ``manifest.json``, safe to load.

Tensor names are ``<component>.<parameter name>`` (``unet.down_blocks.0.attentions.0.transformer_blocks.0.
attn2.to_k.weight``), so plain diffusers users can apply an edit without eraselab::

    from safetensors.torch import load_file
    for name, tensor in load_file("my-edit/edit.safetensors").items():
        component, parameter = name.split(".", 1)
        getattr(pipe, component).get_parameter(parameter).data.copy_(tensor)

:func:`apply_edit` does the same after checking everything first (every key exists with the right shape, the
file's hash matches the manifest, the base model is the one the edit was made for), so nothing is applied
halfway, and it can be undone.

The manifest is sealed: ``seal`` is the SHA-256 of the canonical JSON of every other manifest field, and those
fields hold ``sha256``, the hash of ``edit.safetensors``. So a manifest changed by hand (a relabelled method, a
removed base fingerprint) and a tensor file changed or truncated are both refused on load, and an edit without
its base-model fingerprint is refused when applied: the check is never skipped.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from eraselab.errors import EraselabError
from eraselab.models.fingerprint import pipeline_fingerprint
from eraselab.provenance import provenance
from eraselab.store import seal_holds, sealed

WEIGHTS, MANIFEST = "edit.safetensors", "manifest.json"
FORMAT = 2  # 2: the manifest carries its seal


@dataclass
class Edit:
    tensors: dict[str, torch.Tensor]
    manifest: dict = field(default_factory=dict)

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        weights = directory / WEIGHTS
        save_file({k: v.detach().cpu().contiguous() for k, v in self.tensors.items()}, weights)
        manifest = {**self.manifest, "format": FORMAT, "provenance": provenance(), "tensors": sorted(self.tensors),
                    "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
        manifest = sealed(manifest)  # in the form it is read back in
        (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        self.manifest = manifest
        return directory

    def base_fingerprint(self) -> str:
        """The fingerprint of the model this edit was made for; an edit that names none is refused."""
        found = self.manifest.get("base_fingerprint")
        if not found:
            raise EraselabError("this edit names no base model (no base_fingerprint in its manifest), so it cannot "
                                "be checked against a model; make the edit again with `eraselab erase`")
        return found

    @classmethod
    def load(cls, directory: str | Path) -> Edit:
        directory = Path(directory)
        weights, manifest_path = directory / WEIGHTS, directory / MANIFEST
        if not weights.is_file() or not manifest_path.is_file():
            raise EraselabError(f"{directory} is not an edit (needs {WEIGHTS} and {MANIFEST})")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise EraselabError(f"{manifest_path} is not valid JSON ({getattr(error, 'msg', error)})") from None
        if not isinstance(manifest, dict) or "seal" not in manifest:
            raise EraselabError(f"{manifest_path} has no seal: it was not written by this eraselab (edit format "
                                f"{FORMAT}); make the edit again with `eraselab erase`")
        if not seal_holds(manifest):
            raise EraselabError(f"{manifest_path} was changed after it was written (its seal does not match): "
                                "refusing an edit whose method, config or base model may not be what it says")
        digest = hashlib.sha256(weights.read_bytes()).hexdigest()
        if manifest.get("sha256") != digest:
            raise EraselabError(f"{weights} does not match the hash in its manifest: truncated or tampered with")
        try:
            tensors = load_file(weights)
        except SafetensorError as error:
            raise EraselabError(f"{weights} is not a readable safetensors file ({error})") from None
        return cls(tensors, manifest)


class AppliedEdit:
    """An edit applied to a pipeline; :meth:`undo` restores the original tensors."""

    def __init__(self, pipe, originals: dict[str, torch.Tensor]) -> None:
        self._pipe, self._originals = pipe, originals

    def undo(self) -> None:
        for name, tensor in self._originals.items():
            _parameter(self._pipe, name).data.copy_(tensor)
        self._originals = {}

    def __enter__(self) -> AppliedEdit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.undo()


def _parameter(pipe, name: str) -> torch.Tensor:
    component, _, key = name.partition(".")
    module = getattr(pipe, component, None)
    if not isinstance(module, torch.nn.Module):
        raise EraselabError(f"edit tensor {name!r} names no pipeline component {component!r}")
    try:
        return module.get_parameter(key)
    except AttributeError:
        raise EraselabError(f"edit tensor {name!r} does not exist in this model") from None


def apply_edit(pipe, edit: Edit | str | Path) -> AppliedEdit:
    """Apply ``edit`` to ``pipe`` in place (strict: every tensor must exist with its shape, and the edit must name
    the base model it was made for, which must be ``pipe``'s); returns a handle whose ``undo()`` restores the base
    weights."""
    return apply_edits(pipe, [edit])


def check_stack(edits: Sequence[Edit]) -> None:
    """Refuse a stack whose edits were made for different base models or change the same tensor."""
    owner: dict[str, int] = {}
    for index, edit in enumerate(edits):
        if edit.base_fingerprint() != edits[0].base_fingerprint():
            raise EraselabError(f"edits 1 and {index + 1} of the stack were made for different base models "
                                f"({edits[0].base_fingerprint()}, {edit.base_fingerprint()})")
        for name in edit.tensors:
            if name in owner:
                raise EraselabError(f"edits {owner[name] + 1} and {index + 1} of the stack both change {name!r}; "
                                    "stacked edits must change disjoint tensors")
            owner[name] = index


def apply_edits(pipe, edits: Sequence[Edit | str | Path]) -> AppliedEdit:
    """Apply a stack of edits at once (SafeGen's self-attention beside UCE's cross-attention, say). Each must have
    been made for ``pipe``'s base model, and no two may change the same tensor: then the order does not matter and
    each edit means what it meant alone. (Stacking an edit onto another's result would need the second made for
    the first's output; that is not supported.) Every check runs before any weight changes."""
    loaded = [e if isinstance(e, Edit) else Edit.load(e) for e in edits]
    if not loaded:
        raise EraselabError("no edit to apply")
    found = pipeline_fingerprint(pipe)
    for edit in loaded:
        expected = edit.base_fingerprint()
        if found != expected:
            raise EraselabError(f"this edit was made for base model {expected}, not for this one ({found}); "
                                "load the model it was made for")
    check_stack(loaded)
    tensors = {name: tensor for edit in loaded for name, tensor in edit.tensors.items()}
    targets = {name: _parameter(pipe, name) for name in tensors}  # check every key before changing any
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(targets[name].shape):
            raise EraselabError(f"edit tensor {name!r} has shape {tuple(tensor.shape)}, the model's is "
                                f"{tuple(targets[name].shape)}")
    originals = {name: p.detach().clone() for name, p in targets.items()}
    with torch.no_grad():
        for name, tensor in tensors.items():
            targets[name].data.copy_(tensor.to(targets[name].dtype))
    return AppliedEdit(pipe, originals)
