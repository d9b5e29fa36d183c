"""The built-in tiny text-to-image model: its world, its training, and the shipped assets."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from eraselab.errors import EraselabError


def assets_dir() -> Path:
    return Path(str(resources.files("eraselab.models.tiny").joinpath("assets")))


def tiny_path(part: str = "pipeline") -> Path:
    """Directory of a shipped part: ``pipeline`` (diffusers), ``classifier`` (the judge) or ``clip``."""
    path = assets_dir() / part
    if not path.is_dir():
        raise EraselabError(f"the built-in tiny model's {part!r} is missing from {path}; reinstall eraselab "
                            "or rebuild it with `eraselab tiny train`")
    return path
