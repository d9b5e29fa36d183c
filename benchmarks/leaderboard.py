"""The tiny world's leaderboard: ``eraselab audit`` of each eraser (the erasure table's edits) and each guard for
each concept, at the audit's default protocol, then ``eraselab leaderboard`` over the cards.

    python benchmarks/leaderboard.py --out runs/leaderboard [--concepts star red outlined]
        [--methods uce rece trce-stage1 ...] [--guards negative-prompt] [--write examples/leaderboard] [--rank-only]

Every audit is resumable (run the same command again after a stop); ``--rank-only`` ranks the audits that have
finished (a card each) without loading a model, and names the ones still missing. ``--write`` copies the
leaderboard's markdown there, with the command that made it, and every card it ranks into ``cards/`` (the
documentation site builds its leaderboard page and each method's measured figures from them).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import _quiet  # noqa: F401  (quiets the libraries before they load)
from eraselab.audit.leaderboard import write_leaderboard
from eraselab.audit.plan import AuditRequest
from eraselab.audit.run import run_audit
from eraselab.models.tiny.world import load_world
from erasure_table import METHODS, TARGETS, make_edits  # the erasure table's edits (this directory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/leaderboard"))
    parser.add_argument("--concepts", nargs="+", choices=sorted(TARGETS), default=sorted(TARGETS))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=["uce", "rece", "trce-stage1"])
    parser.add_argument("--guards", nargs="+", default=["negative-prompt"])
    parser.add_argument("--write", type=Path, default=None, help="copy leaderboard.md here (as README.md)")
    parser.add_argument("--rank-only", action="store_true", help="rank the finished audits; run nothing")
    args = parser.parse_args()
    audits = finished(args) if args.rank_only else run_all(args)
    table = write_leaderboard(audits, args.out / "leaderboard")
    print((args.out / "leaderboard" / "leaderboard.md").read_text())
    if args.write:
        write_example(args, audits, len(table))


def finished(args: argparse.Namespace) -> list[Path]:
    """The requested audits that have a card, in the order ``run_all`` makes them; the others are named."""
    labels = [f"{label}-{concept}" for concept in args.concepts for label in (*args.methods, *args.guards)]
    missing = [label for label in labels if not (args.out / "audits" / label / "card.json").is_file()]
    if missing:
        print(f"not finished (left out): {', '.join(missing)}", flush=True)
    return [args.out / "audits" / label for label in labels if label not in missing]


def run_all(args: argparse.Namespace) -> list[Path]:
    """Make each concept's edits and audit every requested defence (each audit resumes where it stopped)."""
    audits = []
    for concept in args.concepts:
        anchor, name, attribute = TARGETS[concept]
        made = make_edits(args.out / "edits", concept, anchor, tuple(load_world().siblings(attribute, name)),
                          args.methods)
        requests = {f"{label}-{concept}": AuditRequest("tiny", concept, edits=(str(directory),))
                    for label, (directory, _) in made.items()}
        requests |= {f"{guard}-{concept}": AuditRequest("tiny", concept, guard=guard) for guard in args.guards}
        for label, request in requests.items():
            print(f"auditing {label}", flush=True)
            run_audit(request, args.out / "audits" / label)
            audits.append(args.out / "audits" / label)
    return audits


def write_example(args: argparse.Namespace, audits: list[Path], rows: int) -> None:
    """The leaderboard's markdown (as README.md, with the command that made it), its HTML and every card."""
    args.write.mkdir(parents=True, exist_ok=True)
    command = ("python benchmarks/leaderboard.py --concepts " + " ".join(args.concepts) + " --methods "
               + " ".join(args.methods) + " --guards " + " ".join(args.guards))
    text = (args.out / "leaderboard" / "leaderboard.md").read_text()
    readme = args.write / "README.md"
    kept = ""  # what a person wrote between the "Made by" line and the table stays
    if readme.is_file() and "\n| concept |" in (old := readme.read_text()):
        head = old[:old.index("\n| concept |") + 1].split("\n\n", 2)
        kept = head[2] if len(head) == 3 else ""
    readme.write_text(
        f"# The tiny world's leaderboard\n\nMade by `{command}` ({rows} audits at `eraselab audit`'s "
        f"default protocol on this project's 2-core CPU); each row is one audit's `card.json`.\n\n"
        f"{kept}{text}")
    shutil.copy(args.out / "leaderboard" / "leaderboard.html", args.write / "leaderboard.html")
    (args.write / "cards").mkdir(exist_ok=True)
    for audit in audits:
        shutil.copy(audit / "card.json", args.write / "cards" / f"{audit.name}.json")


if __name__ == "__main__":
    main()
