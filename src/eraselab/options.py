"""A user's options for a method, an attack, a guard or a detector, checked in one place whether they come from
CLI flags, a YAML block or a Python call: an unknown name gets a "did you mean", a value of the wrong type names
the types the option takes, YAML's lists become the tuples the frozen configs hold, and a whole number where only
text is taken becomes its digits (YAML reads ``stages: 2`` as a number).

>>> from eraselab.erase.registry import ERASERS
>>> build(ERASERS, "uce", {"lamb": 0.1}).lamb
0.1
>>> build(ERASERS, "uce", {"lamd": 0.1})
Traceback (most recent call last):
...
eraselab.errors.EraselabError: the uce erasure method has no option 'lamd'; did you mean 'lamb'? (options: ...)
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import types
import typing
from collections.abc import Mapping
from typing import Any

from eraselab.errors import EraselabError
from eraselab.profile import STABLE_DIFFUSION, ModelProfile
from eraselab.registry import Registry


def parse_key_values(pairs: list[str], flag: str) -> dict[str, Any]:
    """``KEY=VALUE`` command-line options as a dict: a VALUE that reads as JSON (numbers, booleans, lists) is taken
    as such, anything else as a string (``--option protocol=exposed8-0.45``, ``--guard-option 'concepts=["a"]'``)."""
    parsed: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise EraselabError(f"{flag} takes KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            parsed[key] = json.loads(value)
        except json.JSONDecodeError:
            parsed[key] = value
    return parsed


def accepted(target: type | typing.Callable) -> dict[str, Any]:
    """The options ``target`` takes and their type hints: a dataclass's init fields, or a constructor's or
    function's keyword parameters (``Any`` where a parameter has no hint)."""
    if dataclasses.is_dataclass(target):
        hints = typing.get_type_hints(target)
        return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(target) if f.init}
    function = target.__init__ if inspect.isclass(target) else target
    hints = typing.get_type_hints(function)
    return {name: hints.get(name, Any) for name, p in inspect.signature(function).parameters.items()
            if name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _allowed_types(hint: Any) -> tuple[type, ...] | None:
    """The runtime types a hint admits (None: anything, e.g. ``Any``)."""
    if hint is Any:
        return None
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    members = typing.get_args(hint) if union else (hint,)
    allowed = tuple(typing.get_origin(t) or t for t in members)
    return allowed if all(isinstance(t, type) for t in allowed) else None


def check_options(target: type | typing.Callable, options: Mapping[str, Any], what: str) -> dict[str, Any]:
    """``options`` checked against what ``target`` takes (see the module docstring); ``what`` names it in errors
    ("the sld guard"). Returns the options with lists turned into tuples where a tuple is taken."""
    known = accepted(target)
    checked = {}
    for name, value in options.items():
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise EraselabError(f"{what} has no option {name!r}{hint} (options: {', '.join(known)})")
        allowed = _allowed_types(known[name])
        if allowed is not None:
            if tuple in allowed and isinstance(value, list):
                value = tuple(value)  # YAML and JSON have lists, the frozen configs hold tuples
            if str in allowed and int not in allowed and type(value) is int:
                value = str(value)  # YAML reads ``stages: 2`` as a number; a text option takes its digits
            number = float in allowed and isinstance(value, int) and not isinstance(value, bool)
            if (not isinstance(value, allowed) and not number) or (isinstance(value, bool) and bool not in allowed):
                names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
                raise EraselabError(f"{what} option {name!r}: expected {names}, got {value!r}")
        checked[name] = value
    return checked


def build(registry: Registry, name: str, options: Mapping[str, Any] | None = None,
          profile: ModelProfile = STABLE_DIFFUSION):
    """The config of the method or attack ``name`` in ``registry`` (its entry's ``config`` class) from a user's
    ``options``: the paper's defaults, the profile's (tiny) defaults over them, then the options, checked."""
    entry = registry.get(name)
    options = check_options(entry.config, options or {}, f"the {name} {registry.kind}")
    return profile.config(entry.config, **options)


def make(registry: Registry, name: str, options: Mapping[str, Any] | None = None):
    """The guard or detector ``name`` in ``registry`` (a class) built with a user's ``options``, checked."""
    factory = registry.get(name)
    return factory(**check_options(factory, options or {}, f"the {name} {registry.kind}"))
