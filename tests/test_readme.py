"""The README stays a front page: the pitch, the two quick-start commands, a tour and links into the documentation,
every one of which resolves (the site's own links are checked by ``mkdocs build --strict`` in CI)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_relative_link_of_the_readme_resolves() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    links = [target for target in re.findall(r"\]\(([^)#]+)\)", text) if "://" not in target]
    assert len(links) >= 10, links  # the documentation is linked, not pasted
    missing = [target for target in links if not (ROOT / target).exists()]
    assert not missing, missing


def test_the_quick_start_has_the_two_commands_and_ci_runs_the_second() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)\n```", quick, flags=re.S)
    assert len(commands) == 2 and all("\n" not in c for c in commands), commands
    assert commands[0].endswith("eraselab demo")
    assert commands[1] in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
