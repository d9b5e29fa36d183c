"""Write a directory of results so that a stopped or failed command never leaves it looking complete."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from eraselab.errors import EraselabError


def writable_directory(path: Path) -> Path:
    """Create ``path`` if needed and prove it is writable, or raise one clear error."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".eraselab-probe-"):
            pass
    except OSError as error:
        raise EraselabError(f"cannot write to output directory {path}: {error.strerror or error}") from None
    return path


@contextmanager
def staged_directory(out: Path) -> Iterator[Path]:
    """Yield a hidden staging folder inside ``out``; on success its files move into ``out``, on failure it is
    removed, so ``out`` only ever holds complete results."""
    writable_directory(out)
    staging = Path(tempfile.mkdtemp(dir=out, prefix=".incomplete-"))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for item in sorted(staging.iterdir()):
        os.replace(item, out / item.name)
    staging.rmdir()


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
