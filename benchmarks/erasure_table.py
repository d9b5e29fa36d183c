"""The erasure table: every method (and guard) x tiny target, judged by the harness, with 95% Wilson intervals.

    python benchmarks/erasure_table.py --out runs/erasure-table [--seeds 12] [--targets star red outlined]
        [--methods uce rece trce-stage1 trce esd advunlearn safegen ...] [--skip-guards]

For each target (the shape "star" towards "shape", the colour "red" towards "green" and the fill "outlined" towards
"solid") it erases with uce, rece, trce (stage 1 alone, and both stages), esd and advunlearn (which take no anchor)
and safegen (image triplets: no anchor, no preserve set) at their tiny defaults, keeping the other classes of the
target's attribute as preserved concepts (UCE's protocol: erase one artist, preserve the others; for ESD, AdvUnlearn's
retain term on them), then runs one experiment per target through ``eraselab run``'s runner: base, the seven edits,
the UCE + SafeGen stack (both edits applied together), and the base model under the negative-prompt, SLD (strong)
and SAFREE guards.
Groups, each >= 64 images at 12 seeds:
- efficacy: the target's training word across the other attribute ("a red star", ...);
- generality: the other training paraphrases and, for shapes and colours, the held-out one ("pentagram");
- specificity: every other class of the target's attribute, one group each ("a red circle", ...: fidelity to
  shape and colour), and the unrelated prompts ("a red shape", "a striped shape ...").
An anchor that leaves the attribute open hands it to the model's prior: unedited, "a red shape" comes out outlined
in 10 of 48 images and "a star" red in 6 of 48 (seeds 0-47), so an erasure towards the blank anchor cannot take a
fill below about 20% or a colour below about 12% (UCE towards the blank anchor left red at 0.125, its floor). The
star's anchor has a floor too: unedited, "a red shape", "an orange shape", ... draw a star in 4 of 72 images at the
table's seeds 0-11 (0.056) and in 9 of 72 at seeds 100-111 (0.125). The fill and the colour are therefore erased
towards another class, as UCE erases with a guide concept. The guide colour is one far from the target: towards
"blue", UCE left no red but also lost purple (1.00 -> 0.71; 24 images a group); towards "green", it kept every other
colour (seeds 100-103, 24 images a group). Preserving the other colours matters for RECE, whose derived embeddings
also reach purple: towards "green" without a preserve set, purple fell to 0.46 at RECE's tiny corpus scale 0.1 and
to 0.88 at 0.3, while star efficacy rose from 0.08 to 0.17 at corpus scale 1.0 (24 images a group).
It prints one markdown table (rate [low, high] per cell; for specificity the worst class and the largest drop
from base in points) and writes it, with every figure, to OUT/table.md and OUT/table.json. Each choice of rows runs
in its own run directory (``run-<target>-<hash>``, ``guards-<target>-<hash>``) beside the edits it shares with other
choices; a resumed run regenerates nothing it already has.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path

import _quiet  # noqa: F401  (quiets the libraries before they load)
from eraselab.erase.corpus import concept_phrases
from eraselab.erase.registry import ERASERS
from eraselab.erase.spec import EraseSpec
from eraselab.errors import EraselabError
from eraselab.experiment import run_experiment
from eraselab.experiment.parse import parse_experiment
from eraselab.experiment.plan import edit_label
from eraselab.models import load_pipeline
from eraselab.models.tiny.suites import erasure_groups
from eraselab.models.tiny.world import load_world
from eraselab.options import build, parse_key_values
from eraselab.profile import TINY
from eraselab.store import RunStore

TARGETS = {  # target word -> (anchor, tiny-world class, attribute)
    "star": ("shape", "star", "shape"),
    "red": ("green", "red", "color"),
    "outlined": ("solid", "outline", "fill"),
}
METHODS = {  # row label -> (method, options beyond its tiny defaults)
    "uce": ("uce", {}), "rece": ("rece", {}), "trce-stage1": ("trce", {"stages": "1"}), "trce": ("trce", {}),
    "esd": ("esd", {}), "advunlearn": ("advunlearn", {}), "safegen": ("safegen", {}),
    # ablations: TRCE's stage 2 alone; AdvUnlearn with its attack never started (ESD on the text encoder, the same
    # budget: warm-up = its 200 tiny iterations) and without its retain term (gamma = 0)
    "trce-stage2": ("trce", {"stages": "2"}), "esd-te": ("advunlearn", {"warmup": 200}),
    "advunlearn-gamma0": ("advunlearn", {"preserve_weight": 0.0}),
}
DEFAULT_ROWS = tuple(METHODS)
STACKS = {"uce+safegen": ("uce", "safegen")}  # edits applied together (disjoint tensors: cross- and self-attention)
TRAINED = ("esd", "advunlearn", "safegen")  # fine-tuned from the base: no anchor (SafeGen no preserve set either)


def add_row_arguments(parser: argparse.ArgumentParser) -> None:
    """``--row`` and ``--stack``: rows beyond the table's, for probing a setting through the same protocol."""
    parser.add_argument("--row", nargs="+", action="append", default=[], metavar=("LABEL", "METHOD KEY=VALUE"),
                        help="an extra row LABEL: METHOD with these options over its tiny defaults (e.g. --row "
                             "trce-s2-fast trce stages=2 lr=0.001 epochs=10); name LABEL in --methods to make it")
    parser.add_argument("--stack", action="append", default=[], metavar="A+B",
                        help="an extra stack of rows made, applied in this order (e.g. trce-stage1+trce-s2-fast)")


def add_rows(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Register ``--row`` and ``--stack`` and check ``--methods`` against the rows known then."""
    for label, *rest in args.row:
        if not rest or rest[0] not in ERASERS.names() or label in METHODS:
            parser.error(f"--row {label}: give a new label, then one of {', '.join(ERASERS.names())}")
        try:
            METHODS[label] = (rest[0], parse_key_values(rest[1:], "--row"))
            build(ERASERS, *METHODS[label], TINY)  # an unknown option or a wrong type, before anything is made
        except EraselabError as error:
            parser.error(f"--row {label}: {error}")
    for stack in args.stack:
        STACKS[stack] = tuple(stack.split("+"))
        if len(STACKS[stack]) < 2 or not set(STACKS[stack]) <= set(METHODS):
            parser.error(f"--stack {stack}: name two or more rows joined by + (rows: {', '.join(METHODS)})")
    unknown = [label for label in args.methods or () if label not in METHODS]
    if unknown:
        parser.error(f"--methods: unknown {', '.join(unknown)} (rows: {', '.join(METHODS)})")


def edit_entries(edits: dict[str, tuple[Path, float]]) -> dict[str, str | list[str]]:
    """Each method's edit, then each stack whose parts were made: label -> an experiment's ``edits`` entry."""
    entries: dict[str, str | list[str]] = {method: str(path) for method, (path, _) in edits.items()}
    for label, parts in STACKS.items():
        if all(part in edits for part in parts):
            entries[label] = [str(edits[part][0]) for part in parts]
    return entries


def make_edits(out: Path, word: str, anchor: str, keep: tuple[str, ...], labels: list[str]
               ) -> dict[str, tuple[Path, float]]:
    """Each row's edit of ``word``, made once: an edit directory made with other settings is made again."""
    pipe = load_pipeline("tiny")
    edits = {}
    for label in labels:
        method, options = METHODS[label]
        config = build(ERASERS, method, options, TINY)
        directory = out / "edits" / f"{label}-{word}"
        manifest = directory / "manifest.json"
        spec = EraseSpec((word,), ("" if method in TRAINED else anchor,), () if method == "safegen" else keep,
                         TINY.erase_templates(word))
        made = json.loads(manifest.read_text()) if manifest.is_file() else {}
        wanted = [asdict(config), [] if method in TRAINED else list(spec.anchors), list(spec.preserve)]
        if [made.get(k) for k in ("config", "anchors", "preserve")] != json.loads(json.dumps(wanted)):
            kwargs = {"progress": False} if method in (*TRAINED, "trce") else {}
            start = time.perf_counter()
            edit = ERASERS.get(method).erase(pipe, spec, config, **kwargs)
            edit.manifest["seconds"] = round(time.perf_counter() - start, 3)
            edit.save(directory)
        edits[label] = (directory, json.loads(manifest.read_text())["seconds"])
    return edits


def run_dir(out: Path, prefix: str, config: dict) -> Path:
    """The run directory of ``config`` under ``out``: a run directory holds one experiment, so each choice of rows
    (and attacks) gets its own, named by a hash of the experiment; running the same choice again resumes it."""
    return out / f"{prefix}-{hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8]}"


def cell(metric: dict) -> str:
    v = metric["value"]
    return f"{v['value']:.3f} [{v['low']:.3f}, {v['high']:.3f}]" if v["value"] is not None else "N/A"


def summarise(run: Path, word: str, name: str, edits: dict, guards: list[str]) -> list[dict]:
    metrics = [m for m in RunStore(run).metrics() if m["name"] in ("efficacy", "generality", "specificity")]
    rows = []
    labels = {"base": "base", **{edit_label(entry): label for label, entry in edit_entries(edits).items()},
              **{f"base+{g}": g for g in guards}}
    base = {m["inputs"]["suite"]["name"]: m["value"]["value"] for m in metrics if m["inputs"]["edit"] == "base"}
    for edit, label in labels.items():
        mine = {m["inputs"]["suite"]["name"]: m for m in metrics if m["inputs"]["edit"] == edit}
        if not mine:
            continue
        neighbours = {s: m for s, m in mine.items() if s.startswith("tiny:target:") and s != f"tiny:target:{name}"}
        worst = min(neighbours, key=lambda s: mine[s]["value"]["value"])
        drop = max(base[s] - m["value"]["value"] for s, m in neighbours.items())
        unrelated = mine[f"tiny:unrelated:{name}"]
        rows.append({
            "target": word, "method": label,
            "efficacy": cell(mine[f"tiny:target:{name}"]),
            "paraphrase": cell(mine[f"tiny:paraphrase:{name}"]),
            "heldout": cell(mine[f"tiny:heldout:{name}"]) if f"tiny:heldout:{name}" in mine else "-",
            "worst_other_class": f"{worst.split(':')[-1]} {cell(mine[worst])}",
            "largest_drop_points": round(100 * drop, 1),
            "unrelated": cell(unrelated),
            "unrelated_drop_points": round(100 * (base[f"tiny:unrelated:{name}"] - unrelated["value"]["value"]), 1),
            "seconds": sum(edits[part][1] for part in STACKS.get(label, (label,)) if part in edits) or None,
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/erasure-table"))
    parser.add_argument("--seeds", type=int, default=12)
    parser.add_argument("--targets", nargs="+", choices=list(TARGETS), default=list(TARGETS))
    parser.add_argument("--methods", nargs="+", default=None, help=f"rows to make (default: {', '.join(METHODS)})")
    parser.add_argument("--anchor", default=None, help="erase towards this word instead of the table's anchor")
    parser.add_argument("--skip-guards", action="store_true")
    add_row_arguments(parser)
    args = parser.parse_args()
    add_rows(parser, args)
    if args.anchor is not None and len(args.targets) > 1:
        parser.error("--anchor takes one target (each target has its own anchor in the table)")
    args.methods = args.methods or list(DEFAULT_ROWS)
    rows = []
    for word in args.targets:
        anchor, name, attribute = TARGETS[word]
        anchor = args.anchor if args.anchor is not None else anchor
        edits = make_edits(args.out, word, anchor, tuple(load_world().siblings(attribute, name)), args.methods)
        guards = [{"name": "negative-prompt", "concept": word}, {"name": "sld", "concept": word, "preset": "strong"},
                  {"name": "safree", "concepts": concept_phrases([word])}]
        config = {"version": 1, "name": f"erasure table: {word}", "models": ["tiny"],
                  "edits": ["base", *edit_entries(edits).values()],
                  "seeds": {"start": 0, "count": args.seeds}, "sampler": {"steps": 25, "guidance": 5.0},
                  "detectors": ["tiny"], "groups": erasure_groups(word)}
        run = run_dir(args.out, f"run-{word}", config)
        run_experiment(parse_experiment(config), run, progress=False)
        rows += summarise(run, word, name, edits, [])
        if args.skip_guards:
            continue
        guard_config = {**config, "name": f"erasure table: guards on {word}", "edits": ["base"], "guards": guards}
        run = run_dir(args.out, f"guards-{word}", guard_config)
        run_experiment(parse_experiment(guard_config), run, progress=False)
        labels = [guard.label for guard in parse_experiment(guard_config).guards]
        rows += [r for r in summarise(run, word, name, {}, labels) if r["method"] != "base"]
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r[c]) for c in columns) + " |" for r in rows]
    table = "\n".join(lines)
    print(table)
    (args.out / "table.md").write_text(table + "\n")
    (args.out / "table.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
