"""The defence x attack table on the tiny model: every attack against no defence, the negative-prompt guard, and
the UCE, RECE, TRCE (stage 1 alone and both stages), ESD, AdvUnlearn and SafeGen edits of one target concept, the
UCE + SafeGen stack (and UCE under the guard), through ``eraselab run``'s attack axis.

    python benchmarks/attack_table.py --concept star --out runs/attack-table [--seeds 4] [--methods uce rece]
        [--rows trce uce+safegen] [--skip-guard] [--attacks textual-inversion unlearndiff ...]

Erases the concept with each method at its tiny defaults as the erasure table does (its anchor and preserve set; ESD
and SafeGen train for a few minutes each), writes two experiments (``edits.yaml``: every edit bare; ``guard.yaml``:
the bare model and UCE under the guard), runs them (resumable: run the same command again after a stop), writes
each run's HTML report (``run-edits-<hash>/report.html``, ``run-guard-<hash>/report.html``: one run directory per
selection of rows and attacks, reusing the cells other selections finished) and prints one table as markdown: the
concept's rate before -> after each attack on fresh images at seeds 0..N-1 (pinned tiny judge, 95% Wilson
interval) and the attack's cost in UNet evaluations and seconds.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import yaml

import _quiet  # noqa: F401  (quiets the libraries before they load)
from eraselab.experiment import run_experiment
from eraselab.experiment.attacks import attack_cell
from eraselab.experiment.parse import parse_experiment
from eraselab.experiment.plan import variants
from eraselab.models.tiny.suites import concept_label
from eraselab.models.tiny.world import load_world
from eraselab.report import attack_records, write_report
from erasure_table import (  # the same edits as the erasure table (this directory)
    DEFAULT_ROWS,
    METHODS,
    TARGETS,
    add_row_arguments,
    add_rows,
    edit_entries,
    make_edits,
    run_dir,
)

ATTACKS = [("embedding-recovery", {}), ("concept-vector", {}), ("concept-vector", {"search": True}),
           ("concept-arithmetic", {}), ("unlearndiff", {}), ("p4d", {}), ("textual-inversion", {})]


def table_cells(run_dir: Path) -> dict[str, dict[str, str]]:
    """Each defence's row of the markdown table: attack label -> "before -> after [interval]; cost"."""
    cells: dict[str, dict[str, str]] = {}
    for defence, label, record in attack_records(run_dir):
        if "reason" in record:
            cells.setdefault(defence, {})[label] = "refused (" + record["reason"][:60] + ")"
            continue
        pre, post, cost = record["pre_attack"], record["post_attack"], record["cost"]
        cells.setdefault(defence, {})[label] = (
            f"{pre['value']:.3f} -> {post['value']:.3f} [{post['low']:.3f}, {post['high']:.3f}]; "
            f"{cost['unet_evals']} UNet, {cost['seconds']:.1f} s")
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concept", default="star")
    parser.add_argument("--anchor", default=None, help="default: the erasure table's anchor for the concept")
    parser.add_argument("--out", type=Path, default=Path("runs/attack-table"))
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--methods", nargs="+", default=None,
                        help=f"the edits to make (default: all, {', '.join(METHODS)}; ESD, AdvUnlearn, SafeGen, TRCE "
                             "train for minutes)")
    parser.add_argument("--rows", nargs="+", default=None,
                        help="attack only these rows of the edits grid (method labels or a stack: uce+safegen) and "
                             "the bare model; default: every edit and stack made")
    parser.add_argument("--skip-guard", action="store_true", help="leave out the guard grid")
    parser.add_argument("--attacks", nargs="+", choices=sorted({n for n, _ in ATTACKS}), default=None,
                        help="run only these attacks (default: all seven; concept-vector is both its variants)")
    add_row_arguments(parser)
    args = parser.parse_args()
    add_rows(parser, args)
    args.methods = args.methods or list(DEFAULT_ROWS)
    anchor, name, attribute = TARGETS.get(args.concept, ("shape", args.concept, ""))  # other shapes: "shape"
    keep = tuple(load_world().siblings(attribute, name)) if attribute else ()
    made = make_edits(args.out, args.concept, args.anchor if args.anchor is not None else anchor, keep, args.methods)
    edits = edit_entries(made)  # every method's edit, and the UCE + SafeGen stack
    if args.rows:
        unknown = sorted(set(args.rows) - set(edits))
        if unknown:
            parser.error(f"--rows: no such edit or stack among those made: {', '.join(unknown)}")
        edits = {label: entry for label, entry in edits.items() if label in args.rows}
    suite = f"tiny:target:{name}"  # suites name the class ("outline"), attacks the word in the prompts ("outlined")
    common = {"version": 1, "models": ["tiny"], "seeds": [0],
              "groups": [{"suite": suite, "metric": "efficacy", "concept": concept_label(args.concept)}],
              "attacks": [{"name": name, "concept": args.concept, "suite": suite, "seeds": args.seeds,
                           "options": options} for name, options in ATTACKS
                          if args.attacks is None or name in args.attacks]}
    # Two grids: every edit bare, then the bare model and the UCE edit under the guard (a grid applies its guards
    # to every edit, and the guard on every edit would double the cost, most of it the composition search).
    guarded = ["base", str(made["uce"][0])] if "uce" in made else ["base"]
    grids = {"edits": {"name": f"attacks on {args.concept}: edits", "edits": ["base", *edits.values()], **common},
             "guard": {"name": f"attacks on {args.concept}: guard", "edits": guarded,
                       "guards": [{"name": "negative-prompt", "concept": args.concept}], **common}}
    if args.skip_guard:
        del grids["guard"]
    cells: dict[str, dict[str, str]] = {}
    for grid, config in grids.items():
        # A run directory holds one experiment, so each selection of rows and attacks gets its own; a cell's
        # directory name is a hash of its model, defence content, attack and seeds, so finished cells of earlier
        # selections (and the guard grid's bare cells, which are the edits grid's) are reused, not run again.
        run = run_dir(args.out, f"run-{grid}", config)
        experiment = parse_experiment(config)
        wanted = {attack_cell(model, edit, guard, attack) for model in experiment.models
                  for edit, guard in variants(experiment).values() for attack in experiment.attacks}
        for cell in args.out.glob("run-*/attacks/*/*.json"):  # summary.json, or refused.json
            target = run / "attacks" / cell.parent.name
            if cell.name in ("summary.json", "refused.json") and cell.parent.name in wanted and not target.exists():
                shutil.copytree(cell.parent, target)
        (args.out / f"{grid}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        run_experiment(experiment, run)
        write_report(run)
        print(f"{grid}: {run / 'report.html'}")
        cells.update(table_cells(run))
    names = sorted({n for row in cells.values() for n in row})
    print("| defence | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    for defence, row in sorted(cells.items()):
        print(f"| {defence} | " + " | ".join(row.get(n, "") for n in names) + " |")


if __name__ == "__main__":
    main()
