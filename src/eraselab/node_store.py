"""The store of one node of a run spread over several nodes, and the merge of node stores into the run's store.

SQLite cannot be shared between hosts (its locks and WAL index do not hold across a network filesystem), so on
several nodes each node's processes write into ``OUT/nodes/NODE/`` (a run store of their own, shared between the
processes of that host only), reading what earlier runs finished from ``OUT``'s store, which nobody writes while
they run. The main process merges the node stores into ``OUT`` when every process is done, and at the start of a
run the stores a crash left behind. A merge copies rows with ``INSERT OR IGNORE`` on their keys and image files
by content hash, so it is idempotent: a merge killed halfway is simply done again.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from eraselab.store import RunStore

NODES = "nodes"


class NodeStore(RunStore):
    """Writes into ``run_dir/nodes/NODE``; reads fall back to ``run_dir``'s store (opened read-only)."""

    def __init__(self, run_dir: Path, node: int) -> None:
        self.below = RunStore(run_dir, read_only=True)  # first: the store's own set-up reads through it
        super().__init__(Path(run_dir) / NODES / str(node))

    def close(self) -> None:
        self.below.close()
        super().close()

    def meta(self, key: str) -> str | None:
        found = self.below.meta(key)
        return found if found is not None else super().meta(key)

    def set_meta_once(self, key: str, value: str) -> str:
        return self.below.meta(key) or super().set_meta_once(key, value)

    def has_image(self, request_key: str) -> bool:
        return self.below.has_image(request_key) or super().has_image(request_key)

    def images(self) -> list[tuple[str, str]]:
        return sorted((dict(self.below.images()) | dict(super().images())).items())

    def image_path(self, image_hash: str) -> Path:
        below = self.below.image_path(image_hash)
        return below if below.exists() else super().image_path(image_hash)

    def detection(self, image_hash: str, detector: str, version: str, settings: dict) -> tuple[dict | None, str | None]:
        try:
            return self.below.detection(image_hash, detector, version, settings)
        except KeyError:
            return super().detection(image_hash, detector, version, settings)


def merge_nodes(store: RunStore) -> int:
    """Merge every node store under ``store``'s run directory into it, then remove them; returns how many. Rows
    of an image whose file is missing or corrupt are left out (a resumed run makes that image again)."""
    merged = 0
    for directory in sorted((store.root / NODES).glob("*/")):
        if (directory / "store.sqlite").is_file():
            _merge(store, directory)
            merged += 1
        shutil.rmtree(directory)
    return merged


def _merge(store: RunStore, directory: Path) -> None:
    node = RunStore(directory)  # read-write: a killed writer's WAL is recovered on open
    try:
        sound = set()
        for image_hash in node.image_hashes():
            if store.image_problem(image_hash) is None:
                sound.add(image_hash)
            elif node.image_problem(image_hash) is None:
                sound.add(store.put_image_file(node.image_path(image_hash).read_bytes()))
        db = node._db  # the same schema on both sides: rows are copied as they are
        rows = {table: db.execute(f"SELECT * FROM {table}").fetchall()  # table names are fixed here
                for table in ("meta", "requests", "images", "detections", "metrics")}
        rows["images"] = [row for row in rows["images"] if row[1] in sound]
        with store.transaction() as target:
            for table, found in rows.items():
                if found:
                    marks = ", ".join("?" * len(found[0]))
                    target.executemany(f"INSERT OR IGNORE INTO {table} VALUES ({marks})", found)
    finally:
        node.close()
