"""Build-time pages (run by mkdocs-gen-files): one page per erasure method, attack and guard, written from the
registries (the module docstring names the paper and its equations; the config dataclass holds the Stable
Diffusion defaults, its ``tiny_overrides`` the tiny model's) with the API reference for mkdocstrings, and the
measured figures from the tiny world's committed audit cards (``examples/leaderboard/cards/``): the leaderboard
page, and each method's, guard's and attack's rows of it on its own page."""

# ruff: noqa: E402 (the libraries are quieted before the registries' imports load them)
from __future__ import annotations

import dataclasses
import inspect
import sys
from pathlib import Path

import mkdocs_gen_files

from eraselab.cli_support import quiet_libraries

quiet_libraries()  # before the registries import diffusers and transformers: their chatter stays out of the build log

from eraselab.attack import ATTACKS
from eraselab.attack.base import SPACES, THREAT_MODELS
from eraselab.audit.card import markdown_cell, rate_text
from eraselab.audit.leaderboard import check_protocols, leaderboard_markdown, read_cards, rows
from eraselab.erase.registry import ERASERS
from eraselab.guard import GUARDS


def _defaults(config: type) -> str:
    """A table of every setting: the paper's (Stable Diffusion) default and the tiny model's."""
    tiny = getattr(config, "tiny_overrides", {})
    xl = getattr(config, "sdxl_overrides", None)  # the authors' SDXL script's, where it differs
    rows = ["| setting | Stable Diffusion (paper) | tiny model |" + (" SDXL |" if xl else ""),
            "|---|---|---|" + ("---|" if xl else "")]
    for field in dataclasses.fields(config):
        default = field.default if field.default is not dataclasses.MISSING else (
            field.default_factory() if field.default_factory is not dataclasses.MISSING else "(required)")
        shown = tiny.get(field.name, default)
        row = f"| `{field.name}` | `{default!r}` | `{shown!r}`{' (tiny)' if field.name in tiny else ''} |"
        if xl:
            row += f" `{xl.get(field.name, default)!r}`{' (SDXL)' if field.name in xl else ''} |"
        rows.append(row)
    return "\n".join(rows)


ROOT = Path(mkdocs_gen_files.config["config_file_path"]).parent
CARDS = read_cards(sorted((ROOT / "examples" / "leaderboard" / "cards").glob("*.json")))
if CARDS:
    check_protocols(CARDS)
BOARD = rows(CARDS)
BY_SOURCE = {card["source"]: card for card in CARDS}
MEASURED = ("## Measured on the tiny world\n\nFrom the [leaderboard](../leaderboard.md)'s audits (`eraselab audit` at "
            "its default protocol; 95% Wilson intervals).\n\n")


def _board_rows(keep) -> str:
    """The leaderboard's rows that ``keep`` accepts, as the leaderboard renders them, or a line saying there are
    none yet."""
    chosen = [row for row in BOARD if keep(row)]
    if not chosen:
        return "No audit of it is on the leaderboard yet.\n\n"
    return leaderboard_markdown(chosen, CARDS[0]["protocol"]) + "\n"


def _attack_rows(name: str) -> str:
    """Every audit's result for the attack ``name`` (each variant): the rate before and after, or why it did not
    run."""
    lines = ["| concept | defence | variant | before | after | UNet evals |", "|---|---|---|---|---|---|"]
    for row in BOARD:
        for result in (a for a in BY_SOURCE[row["source"]]["attacks"] if a["attack"] == name):
            cells = [row["concept"], row["defence"], result["label"]]
            if result["status"] == "run":
                cells += [rate_text(result["before"]), rate_text(result["after"]), f"{result['cost']['unet_evals']:,}"]
            else:
                reason = f": {result['reason']}" if result.get("reason") else ""
                cells += [f"{result['status']}{reason}", "-", "-"]
            lines.append("| " + " | ".join(markdown_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n\n" if len(lines) > 2 else "No audit ran it yet.\n\n"


def _page(path: str, title: str, module, extra: str, config: type | None, measured: str) -> None:
    with mkdocs_gen_files.open(path, "w") as page:
        page.write(f"# {title}\n\n{inspect.getdoc(module) or ''}\n\n{extra}\n\n")
        if config is not None:
            page.write(f"## Settings\n\n{_defaults(config)}\n\n")
        page.write(MEASURED + measured)
        page.write(f"## Reference\n\n::: {module.__name__}\n")


index = ["# Methods, attacks and guards", "", "Generated from the registries at build time.", "",
         "## Erasure methods", ""]
for name in ERASERS.names():
    entry = ERASERS.get(name)
    module = sys.modules[entry.erase.__module__]
    _page(f"methods/{name}.md", f"Erasure method `{name}`", module, "", entry.config,
          _board_rows(lambda row, name=name: name in row["methods"].split("+")))
    index.append(f"- [`{name}`](methods/{name}.md)")
index += ["", "## Attacks", ""]
for name in ATTACKS.names():
    entry = ATTACKS.get(name)
    module = sys.modules[entry.attack.__module__]
    space = entry.space if isinstance(entry.space, str) else "depends on its settings"
    extra = (f"**Threat model**: `{entry.threat_model}`: {THREAT_MODELS[entry.threat_model]}.  \n"
             f"**Optimises in**: {space}" + (f": {SPACES[space]}." if space in SPACES else "."))
    _page(f"attacks/{name}.md", f"Attack `{name}`", module, extra, entry.config, _attack_rows(name))
    index.append(f"- [`{name}`](attacks/{name}.md)")
index += ["", "## Guards", ""]
for name in GUARDS.names():
    guard = GUARDS.get(name)
    _page(f"guards/{name}.md", f"Guard `{name}`", sys.modules[guard.__module__], "", None,
          _board_rows(lambda row, name=name: row["guard"] == name))
    index.append(f"- [`{name}`](guards/{name}.md)")
with mkdocs_gen_files.open("catalogue.md", "w") as page:
    page.write("\n".join(index) + "\n")

with mkdocs_gen_files.open("leaderboard.md", "w") as page:
    page.write("# The tiny world's leaderboard\n\nOne row per audit card committed in `examples/leaderboard/cards/` "
               "(`python benchmarks/leaderboard.py --write examples/leaderboard` makes them); which defence to "
               "choose from it: [which eraser should I use](choosing.md).\n\n")
    page.write(leaderboard_markdown(BOARD, CARDS[0]["protocol"]) if CARDS else "No card is committed yet.\n")
