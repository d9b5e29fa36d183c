"""What produced a result: package versions and the git commit of the eraselab source."""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path

from eraselab import __version__


def provenance() -> dict:
    """Package versions and the git commit of the eraselab source, recorded with every run and every edit."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                                text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    versions = {name: metadata.version(name) for name in ("torch", "diffusers", "transformers")}
    return {"eraselab": __version__, "git_commit": commit, **versions}
