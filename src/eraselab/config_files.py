"""Reading a user's YAML, JSON or JSON-lines file (``yaml.safe_load``: never code), with one clear error for every
way it fails."""

from __future__ import annotations

import json
from collections.abc import Iterator
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


def jsonl_records(path: Path, field: str | None = None) -> Iterator[tuple[int, dict]]:
    """(line number, record) for every non-blank line of the JSON-lines file ``path``; each record must be an object
    (holding the string ``field``, where one is named), or the error names the line."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise EraselabError(f"{path} is not UTF-8 text") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise EraselabError(f"{path}, line {number}: not valid JSON ({error.msg})") from None
        if not isinstance(record, dict):
            raise EraselabError(f"{path}, line {number}: not a JSON object")
        if field is not None and not isinstance(record.get(field), str):
            raise EraselabError(f"{path}, line {number}, field {field!r}: missing or not a string")
        yield number, record
