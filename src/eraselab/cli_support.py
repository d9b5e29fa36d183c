"""What every CLI verb shares: quiet libraries, and user errors as one line on stderr with exit code 2."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import typer

from eraselab.errors import EraselabError


def quiet_libraries() -> None:
    """diffusers/transformers chatter (deprecations, optional backends such as transformers' "requires torchvision,
    falling back" on importing diffusers' pipelines) is not the user's business. The verbosity variables are read
    when the libraries are first imported, so the program (``eraselab.__main__``) calls this before importing the
    verbs."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    import logging

    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()  # their per-file loading bars; eraselab shows its own progress
    transformers_logging.disable_progress_bar()


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn :class:`EraselabError` into one line on stderr and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        quiet_libraries()
        try:
            return command(*args, **kwargs)
        except EraselabError as error:
            typer.echo(f"eraselab: error: {error}", err=True)
            raise typer.Exit(2) from None

    return wrapper
