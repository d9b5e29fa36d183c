"""A helper the kill-and-resume tests share: how many images a run has committed so far, read while it runs."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def committed_images(run_dir: Path) -> int:
    """Images committed in the run's store and in its node stores (several nodes), read-only, while it runs."""
    count = 0
    for store in [run_dir / "store.sqlite", *run_dir.glob("nodes/*/store.sqlite")]:
        if not store.is_file():
            continue
        db = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=60)
        try:
            count += db.execute("SELECT COUNT(*) FROM images").fetchone()[0]
        except sqlite3.OperationalError:  # the schema is not made yet
            pass
        finally:
            db.close()
    return count
