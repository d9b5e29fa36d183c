"""Write results so that a stopped or failed command never leaves them looking complete.

A verb that writes a directory writes it under a hidden sibling (``.NAME.incomplete-XXXX``) and renames it into
place when everything is written (:func:`staged_output`); a verb that writes one file writes a temporary sibling
and renames it (:func:`atomic_write_text`). Both check first that the place is writable (:func:`check_writable`),
without creating anything, so that a bad path fails before any model is loaded.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from eraselab.errors import EraselabError


def _nearest_existing(path: Path) -> Path:
    probe = path.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def check_writable(path: Path, kind: str = "output directory") -> Path:
    """Prove that ``path`` (a directory, or a file when ``kind`` says so) can be written, creating nothing: it
    must be a writable directory already, or its nearest existing ancestor must be."""
    if kind == "output directory" and path.exists() and not path.is_dir():
        raise EraselabError(f"cannot write to {kind} {path}: it is a file")
    if kind != "output directory" and path.is_dir():
        raise EraselabError(f"cannot write to {kind} {path}: it is a directory")
    probe = path if path.is_dir() and kind == "output directory" else _nearest_existing(path.parent)
    if not probe.is_dir():
        raise EraselabError(f"cannot write to {kind} {path}: {probe} is a file, not a directory")
    try:
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".eraselab-probe-"):
            pass
    except OSError as error:
        raise EraselabError(f"cannot write to {kind} {path}: {error.strerror or error}") from None
    return path


def writable_directory(path: Path) -> Path:
    """Create ``path`` if needed and prove it is writable, or raise one clear error (for run directories that
    resume by design: a tiny training run, an attack cell of an experiment)."""
    check_writable(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise EraselabError(f"cannot write to output directory {path}: {error.strerror or error}") from None
    return path


def _make_parents(path: Path) -> list[Path]:
    """Create ``path``'s missing ancestors; returns those it created, innermost first."""
    created = []
    probe = path.parent
    while not probe.exists():
        created.append(probe)
        probe = probe.parent
    path.parent.mkdir(parents=True, exist_ok=True)
    return created


@contextmanager
def staged_output(out: Path) -> Iterator[Path]:
    """Yield a hidden sibling directory of ``out`` to write into. On success it is renamed to ``out`` (or, when
    ``out`` exists already, its entries are moved into ``out``, each replacing its namesake); on failure it is
    removed, with any parent directory made for it, so a failed command leaves nothing behind."""
    check_writable(out)
    created = _make_parents(out)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.incomplete-"))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for parent in created:  # innermost first; only the empty ones we made
            try:
                parent.rmdir()
            except OSError:
                break
        raise
    if not out.exists():
        os.replace(staging, out)  # the whole directory appears at once
        return
    for item in sorted(staging.iterdir()):
        target = out / item.name
        if target.is_dir() and not item.is_dir():
            shutil.rmtree(target)
        os.replace(item, target)
    staging.rmdir()


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``path`` through a temporary sibling renamed into place: it is either whole or absent."""
    check_writable(path, "output file")
    _make_parents(path)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False,
                                     encoding="utf-8") as handle:
        handle.write(text)
    os.replace(handle.name, path)
    return path


def jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)


def write_jsonl(path: Path, records: list[dict]) -> None:
    atomic_write_text(path, jsonl(records))
