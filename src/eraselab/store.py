"""RunStore: one SQLite database per run directory plus image files named by their content hash.

A generation request is keyed by a hash of everything that decides its image (model fingerprint, edit id,
input, seed, sampler settings), a detection by (image, detector, version, settings), a metric by its inputs.
Every write is one transaction and every insert is idempotent (``INSERT OR IGNORE`` on those keys), and an
image file is written under a temporary name and renamed into place before its row is committed: a run killed
at any instant and started again ends with exactly the rows an uninterrupted run gives, none lost, none twice.
WAL mode and a busy timeout let several processes (sharded workers) write into one store.

>>> import tempfile
>>> from PIL import Image
>>> store = RunStore(tempfile.mkdtemp())
>>> key = store.add_request({"model": "tiny", "edit": "base", "prompt": "a red star", "seed": 0, "steps": 25})
>>> store.has_image(key)
False
>>> _ = store.put_image(key, Image.new("RGB", (32, 32), "red"))
>>> store.has_image(key), store.add_request({"seed": 0, "prompt": "a red star", "steps": 25, "edit": "base",
...                                          "model": "tiny"}) == key
(True, True)
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from PIL import Image

from eraselab.errors import EraselabError

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS requests (
    key TEXT PRIMARY KEY, spec TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    request_key TEXT PRIMARY KEY REFERENCES requests(key), image_hash TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS detections (
    image_hash TEXT NOT NULL, detector TEXT NOT NULL, version TEXT NOT NULL, settings_hash TEXT NOT NULL,
    result TEXT, error TEXT, created REAL NOT NULL,
    PRIMARY KEY (image_hash, detector, version, settings_hash));
CREATE TABLE IF NOT EXISTS metrics (
    key TEXT PRIMARY KEY, name TEXT NOT NULL, inputs TEXT NOT NULL, value TEXT NOT NULL, created REAL NOT NULL);
"""


def stable_hash(value: Any) -> str:
    """sha256 of the canonical JSON of ``value`` (sorted keys, no whitespace)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def sealed(record: dict) -> dict:
    """``record`` as JSON reads it back, with ``seal``: the :func:`stable_hash` of every other field, so that a
    later change to any of them is seen (:func:`seal_holds`). Edit manifests and trap keys are sealed this way."""
    body = json.loads(json.dumps({k: v for k, v in record.items() if k != "seal"}, default=str))
    return {**body, "seal": stable_hash(body)}


def seal_holds(record: dict) -> bool:
    """Whether ``record``'s ``seal`` still matches the rest of it."""
    return record.get("seal") == stable_hash({k: v for k, v in record.items() if k != "seal"})


class RunStore:
    """The results of one run directory: requests, images, detections and metrics."""

    def __init__(self, run_dir: str | Path, read_only: bool = False) -> None:
        self.root = Path(run_dir)
        if read_only:  # a store nobody writes meanwhile: no locks, no WAL index (settle() it first)
            self._db = sqlite3.connect(f"file:{self.root / 'store.sqlite'}?immutable=1", uri=True)
            return
        try:
            (self.root / "images").mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise EraselabError(f"cannot create run directory {self.root}: {error.strerror or error}") from None
        self._db = sqlite3.connect(self.root / "store.sqlite", timeout=60, isolation_level=None)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a committed transaction survives a kill
            self._db.execute("PRAGMA foreign_keys=ON")
            with self.transaction() as db:
                for statement in filter(str.strip, _SCHEMA.split(";")):  # executescript would commit midway
                    db.execute(statement)
                db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        except sqlite3.DatabaseError as error:
            self._db.close()
            raise EraselabError(f"{self.root / 'store.sqlite'} is not a readable run store ({error})") from None
        found = self.meta("schema_version")
        if found != str(SCHEMA_VERSION):
            raise EraselabError(f"{self.root} was written by another store schema ({found}); use a new run dir")

    # -- plumbing ---------------------------------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; ``BEGIN IMMEDIATE`` takes the write lock up front so writers queue cleanly."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    def settle(self) -> None:
        """Move every committed transaction from the WAL into the database file, so that a reader opened with
        ``read_only`` (which does not read the WAL) sees them all."""
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta_once(self, key: str, value: str) -> str:
        """Record ``value`` under ``key`` unless already set; returns what the store holds."""
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", (key, value))
        return self.meta(key)  # type: ignore[return-value]

    # -- requests and images ---------------------------------------------------------------------------------
    def add_request(self, spec: dict) -> str:
        """Record a generation request (idempotent); returns its key."""
        return self.add_requests([spec])[0]

    def add_requests(self, specs: list[dict]) -> list[str]:
        """Record many requests in one transaction (idempotent); returns their keys."""
        keys = [stable_hash(spec) for spec in specs]
        rows = [(key, json.dumps(spec, sort_keys=True), time.time()) for key, spec in zip(keys, specs, strict=True)]
        with self.transaction() as db:
            db.executemany("INSERT OR IGNORE INTO requests VALUES (?, ?, ?)", rows)
        return keys

    def request(self, key: str) -> dict:
        row = self._db.execute("SELECT spec FROM requests WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise KeyError(key)
        return json.loads(row[0])

    def has_image(self, request_key: str) -> bool:
        return self._db.execute("SELECT 1 FROM images WHERE request_key = ?", (request_key,)).fetchone() is not None

    def image_path(self, image_hash: str) -> Path:
        return self.root / "images" / image_hash[:2] / f"{image_hash}.png"

    def put_image(self, request_key: str, image: Image.Image) -> str:
        """Store ``image`` as the result of a request; returns its content hash. Idempotent."""
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        image_hash = self.put_image_file(buffer.getvalue())
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO images VALUES (?, ?, ?)", (request_key, image_hash, time.time()))
        return image_hash

    def put_image_file(self, data: bytes) -> str:
        """Write an image file (PNG bytes) under its content hash, whole before any row can point at it."""
        image_hash = hashlib.sha256(data).hexdigest()
        path = self.image_path(image_hash)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".tmp-", delete=False) as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(handle.name, path)
        return image_hash

    def images(self) -> list[tuple[str, str]]:
        """(request key, image hash) pairs, in request-key order."""
        return list(self._db.execute("SELECT request_key, image_hash FROM images ORDER BY request_key"))

    def load_image(self, image_hash: str) -> Image.Image:
        """The stored image; raises :class:`EraselabError` if the file is missing, corrupt or tampered with."""
        path = self.image_path(image_hash)
        try:
            data = path.read_bytes()
        except OSError:
            raise EraselabError(f"image {image_hash[:12]} is missing from {path.parent}") from None
        if hashlib.sha256(data).hexdigest() != image_hash:
            raise EraselabError(f"image {image_hash[:12]} is corrupt (its content no longer matches its hash)")
        return Image.open(io.BytesIO(data)).convert("RGB")

    def image_problem(self, image_hash: str) -> str | None:
        """Why the stored file of ``image_hash`` cannot be used (missing, or its content no longer matches its
        hash), or ``None`` when it is sound."""
        try:
            data = self.image_path(image_hash).read_bytes()
        except OSError:
            return "missing"
        return None if hashlib.sha256(data).hexdigest() == image_hash else "corrupt"

    def image_hashes(self) -> list[str]:
        """Every distinct stored image, by content hash."""
        return [h for (h,) in self._db.execute("SELECT DISTINCT image_hash FROM images ORDER BY image_hash")]

    def damaged_images(self, hashes: list[str] | None = None) -> dict[str, str]:
        """Every stored image (of ``hashes``, default all) whose file is missing or corrupt: {hash: problem}."""
        return {h: problem for h in (self.image_hashes() if hashes is None else hashes)
                if (problem := self.image_problem(h))}

    def check_images(self) -> int:
        """Refuse a run whose stored images are missing or corrupt (``eraselab run`` makes them again); returns
        how many images were checked."""
        hashes = self.image_hashes()
        damaged = self.damaged_images(hashes)
        if damaged:
            shown = ", ".join(f"{h[:12]} ({problem})" for h, problem in list(damaged.items())[:3])
            more = f" and {len(damaged) - 3} more" if len(damaged) > 3 else ""
            raise EraselabError(f"{len(damaged)} stored image(s) of {self.root} are missing or corrupt: {shown}"
                                f"{more}; `eraselab run EXPERIMENT --out {self.root}` makes them again")
        return len(hashes)

    def discard_image(self, image_hash: str) -> list[str]:
        """Forget a damaged image: its file, the rows that point to it and the errors recorded when it could not
        be read, so a resumed run generates it again (generation is deterministic) and judges it again. Verdicts
        on it stay: they were made on the bytes the hash names. Returns the request keys that lost their image."""
        keys = [k for (k,) in self._db.execute("SELECT request_key FROM images WHERE image_hash = ?", (image_hash,))]
        with self.transaction() as db:
            db.execute("DELETE FROM images WHERE image_hash = ?", (image_hash,))
            db.execute("DELETE FROM detections WHERE image_hash = ? AND result IS NULL", (image_hash,))
        self.image_path(image_hash).unlink(missing_ok=True)
        return keys

    # -- detections and metrics ------------------------------------------------------------------------------
    def put_detection(self, image_hash: str, detector: str, version: str, settings: dict,
                      result: dict | None, error: str | None = None) -> None:
        """Record a detector's result (or its error: an error is never a "safe" result)."""
        row = (image_hash, detector, version, stable_hash(settings),
               None if result is None else json.dumps(result, sort_keys=True), error, time.time())
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO detections VALUES (?, ?, ?, ?, ?, ?, ?)", row)

    def detection(self, image_hash: str, detector: str, version: str, settings: dict) -> tuple[dict | None, str | None]:
        """(result, error) for one image and detector; ``KeyError`` if it was never judged."""
        row = self._db.execute(
            "SELECT result, error FROM detections WHERE image_hash=? AND detector=? AND version=? AND settings_hash=?",
            (image_hash, detector, version, stable_hash(settings))).fetchone()
        if row is None:
            raise KeyError((image_hash, detector))
        return (json.loads(row[0]) if row[0] is not None else None), row[1]

    def put_metric(self, name: str, inputs: dict, value: dict) -> str:
        key = stable_hash({"name": name, "inputs": inputs})
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO metrics VALUES (?, ?, ?, ?, ?)",
                       (key, name, json.dumps(inputs, sort_keys=True), json.dumps(value, sort_keys=True), time.time()))
        return key

    def metrics(self) -> list[dict]:
        rows = self._db.execute("SELECT name, inputs, value FROM metrics ORDER BY name, key")
        return [{"name": n, "inputs": json.loads(i), "value": json.loads(v)} for n, i, v in rows]

    def has_results(self) -> bool:
        """Whether any image, detection or metric was recorded."""
        return any(self._db.execute(f"SELECT 1 FROM {t} LIMIT 1").fetchone()  # table names are fixed here
                   for t in ("images", "detections", "metrics"))

    def forget_unfinished(self) -> None:
        """Drop what a run that produced no result recorded (its experiment, suite hashes, fingerprints and
        requests), so the directory can be bound to another experiment. Refused once there are results."""
        if self.has_results():
            raise EraselabError(f"{self.root} holds results; they are never dropped")
        with self.transaction() as db:
            db.execute("DELETE FROM meta WHERE key != 'schema_version'")
            db.execute("DELETE FROM requests")

    def counts(self) -> dict[str, int]:
        return {t: self._db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]  # table names are fixed here
                for t in ("requests", "images", "detections", "metrics")}
