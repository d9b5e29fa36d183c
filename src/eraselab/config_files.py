"""Reading a user's YAML or JSON file (``yaml.safe_load``: never code), with one clear error for every way it fails."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from eraselab.errors import EraselabError


def read_yaml(path: Path, what: str) -> Any:
    """The document in ``path`` (YAML, so JSON too); a missing file or a syntax error is one line naming where."""
    if not path.is_file():
        raise EraselabError(f"{what} {path} does not exist")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise EraselabError(f"{what} {path} is not UTF-8 text") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise EraselabError(f"{path} is not valid YAML{where}: {getattr(error, 'problem', error)}") from None
