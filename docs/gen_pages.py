"""Build-time pages (run by mkdocs-gen-files): one page per erasure method, attack and guard, written from the
registries (the module docstring names the paper and its equations; the config dataclass holds the Stable
Diffusion defaults, its ``tiny_overrides`` the tiny model's), and the API reference pages for mkdocstrings."""

from __future__ import annotations

import dataclasses
import inspect
import sys

import mkdocs_gen_files

from eraselab.attack import ATTACKS
from eraselab.attack.base import SPACES, THREAT_MODELS
from eraselab.erase.registry import ERASERS
from eraselab.guard import GUARDS


def _defaults(config: type) -> str:
    """A table of every setting: the paper's (Stable Diffusion) default and the tiny model's."""
    tiny = getattr(config, "tiny_overrides", {})
    rows = ["| setting | Stable Diffusion (paper) | tiny model |", "|---|---|---|"]
    for field in dataclasses.fields(config):
        default = field.default if field.default is not dataclasses.MISSING else (
            field.default_factory() if field.default_factory is not dataclasses.MISSING else "(required)")
        shown = tiny.get(field.name, default)
        rows.append(f"| `{field.name}` | `{default!r}` | `{shown!r}`{' (tiny)' if field.name in tiny else ''} |")
    return "\n".join(rows)


def _page(path: str, title: str, module, extra: str, config: type | None) -> None:
    with mkdocs_gen_files.open(path, "w") as page:
        page.write(f"# {title}\n\n{inspect.getdoc(module) or ''}\n\n{extra}\n\n")
        if config is not None:
            page.write(f"## Settings\n\n{_defaults(config)}\n\n")
        page.write(f"## Reference\n\n::: {module.__name__}\n")


index = ["# Methods, attacks and guards", "", "Generated from the registries at build time.", "",
         "## Erasure methods", ""]
for name in ERASERS.names():
    entry = ERASERS.get(name)
    module = sys.modules[entry.erase.__module__]
    _page(f"methods/{name}.md", f"Erasure method `{name}`", module, "", entry.config)
    index.append(f"- [`{name}`](methods/{name}.md)")
index += ["", "## Attacks", ""]
for name in ATTACKS.names():
    entry = ATTACKS.get(name)
    module = sys.modules[entry.attack.__module__]
    space = entry.space if isinstance(entry.space, str) else "depends on its settings"
    extra = (f"**Threat model**: `{entry.threat_model}`: {THREAT_MODELS[entry.threat_model]}.  \n"
             f"**Optimises in**: {space}" + (f": {SPACES[space]}." if space in SPACES else "."))
    _page(f"attacks/{name}.md", f"Attack `{name}`", module, extra, entry.config)
    index.append(f"- [`{name}`](attacks/{name}.md)")
index += ["", "## Guards", ""]
for name in GUARDS.names():
    guard = GUARDS.get(name)
    _page(f"guards/{name}.md", f"Guard `{name}`", sys.modules[guard.__module__], "", None)
    index.append(f"- [`{name}`](guards/{name}.md)")
with mkdocs_gen_files.open("catalogue.md", "w") as page:
    page.write("\n".join(index) + "\n")
