"""The tiny world's leaderboard: ``eraselab audit`` of each eraser (the erasure table's edits) and each guard for
each concept, at the audit's default protocol, then ``eraselab leaderboard`` over the cards.

    python benchmarks/leaderboard.py --out runs/leaderboard [--concepts star red outlined]
        [--methods uce rece trce-stage1 ...] [--guards negative-prompt] [--write examples/leaderboard]

Every audit is resumable (run the same command again after a stop). ``--write`` copies the leaderboard's markdown
there, with the command that made it, and every card it ranks into ``cards/`` (the documentation site builds its
leaderboard page and each method's measured figures from them).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

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
    args = parser.parse_args()
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
    table = write_leaderboard(audits, args.out / "leaderboard")
    print((args.out / "leaderboard" / "leaderboard.md").read_text())
    if args.write:
        args.write.mkdir(parents=True, exist_ok=True)
        command = ("python benchmarks/leaderboard.py --concepts " + " ".join(args.concepts) + " --methods "
                   + " ".join(args.methods) + " --guards " + " ".join(args.guards))
        text = (args.out / "leaderboard" / "leaderboard.md").read_text()
        (args.write / "README.md").write_text(
            f"# The tiny world's leaderboard\n\nMade by `{command}` ({len(table)} audits at `eraselab audit`'s "
            f"default protocol on this project's 2-core CPU); each row is one audit's `card.json`.\n\n"
            f"{text}")
        shutil.copy(args.out / "leaderboard" / "leaderboard.html", args.write / "leaderboard.html")
        (args.write / "cards").mkdir(exist_ok=True)
        for audit in audits:
            shutil.copy(audit / "card.json", args.write / "cards" / f"{audit.name}.json")


if __name__ == "__main__":
    main()
