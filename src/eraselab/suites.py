"""Prompt suites: the public prompt sets of the field, the tiny world's suites, and loaders for CSV / JSONL / HF.

A suite keeps per-prompt seeds and guidance where its file has them (I2P's ``evaluation_seed`` and
``evaluation_guidance``), and carries its name, version, source, licence and a content hash that every result
records, so that two numbers computed on different prompt lists can never be mistaken for one another.

>>> suite = load_suite("i2p-sexual")
>>> len(suite), suite.items[0].seed is not None, suite.license
(931, True, 'MIT')
>>> load_suite("tiny:target:star").items[0].prompt
'a red star'
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from eraselab.config_files import jsonl_records
from eraselab.errors import EraselabError
from eraselab.registry import Registry


@dataclass(frozen=True)
class PromptItem:
    prompt: str
    seed: int | None = None
    guidance: float | None = None
    categories: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def key(self) -> dict:
        return {"prompt": self.prompt, "seed": self.seed, "guidance": self.guidance, "categories": self.categories}


@dataclass(frozen=True)
class PromptSuite:
    name: str
    items: tuple[PromptItem, ...]
    version: str = "1"
    source: str = ""
    license: str = ""

    def __len__(self) -> int:
        return len(self.items)

    @property
    def content_hash(self) -> str:
        """sha256 over the prompts, seeds, guidance and categories, in order."""
        text = json.dumps([item.key() for item in self.items], sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def describe(self) -> dict:
        return {"name": self.name, "version": self.version, "size": len(self), "hash": self.content_hash,
                "source": self.source, "license": self.license}

    def filter(self, name: str, keep: Callable[[PromptItem], bool]) -> PromptSuite:
        return PromptSuite(name, tuple(i for i in self.items if keep(i)), self.version, self.source, self.license)


def _parse(value: str | None, kind: type, where: str, column: str):
    if value is None or value.strip() == "":
        return None
    try:
        return kind(float(value)) if kind is int and value.strip().endswith(".0") else kind(value)
    except ValueError:
        raise EraselabError(f"{where}, field {column!r}: {value!r} is not {'an integer' if kind is int else 'a number'}"
                            ) from None


def load_csv(path: str | Path, name: str | None = None, *, prompt_column: str = "prompt",
             seed_column: str = "evaluation_seed", guidance_column: str = "evaluation_guidance",
             categories_column: str = "categories", source: str = "", license: str = "") -> PromptSuite:
    """A suite from a CSV file with a prompt column (I2P's layout: seeds, guidance and categories if present)."""
    path = Path(path)
    if not path.is_file():
        raise EraselabError(f"prompt file {path} does not exist")
    items = []
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        if prompt_column not in columns:
            raise EraselabError(f"{path}: no {prompt_column!r} column (columns: {', '.join(columns) or 'none'})")
        try:
            for row in reader:
                where = f"{path}, line {reader.line_num}"
                if None in row or any(v is None for v in row.values()):  # too many or too few fields
                    found = sum(v is not None for k, v in row.items() if k is not None) + len(row.get(None) or [])
                    raise EraselabError(f"{where}: expected {len(columns)} fields, found {found}")
                categories = tuple(c.strip() for c in (row.get(categories_column) or "").split(",") if c.strip())
                extra = {k: v for k, v in row.items() if k not in (prompt_column, seed_column, guidance_column,
                                                                   categories_column)}
                items.append(PromptItem(row[prompt_column], _parse(row.get(seed_column), int, where, seed_column),
                                        _parse(row.get(guidance_column), float, where, guidance_column), categories,
                                        extra))
        except csv.Error as error:
            raise EraselabError(f"{path}, line {reader.line_num}: malformed CSV ({error})") from None
    return PromptSuite(name or path.stem, tuple(items), source=source or str(path), license=license)


def load_jsonl(path: str | Path, name: str | None = None) -> PromptSuite:
    """A suite from JSON lines with a ``prompt`` key (``seed``, ``guidance``, ``categories`` optional)."""
    path = Path(path)
    if not path.is_file():
        raise EraselabError(f"prompt file {path} does not exist")
    items = []
    for number, record in jsonl_records(path, "prompt"):
        where = f"{path}, line {number}"
        seed, guidance = record.get("seed"), record.get("guidance")
        if seed is not None and not isinstance(seed, int):
            raise EraselabError(f"{where}, field 'seed': {seed!r} is not an integer")
        if guidance is not None and not isinstance(guidance, int | float):
            raise EraselabError(f"{where}, field 'guidance': {guidance!r} is not a number")
        categories = record.get("categories") or []
        if isinstance(categories, str):
            categories = [c.strip() for c in categories.split(",") if c.strip()]
        items.append(PromptItem(record["prompt"], seed, guidance, tuple(map(str, categories))))
    return PromptSuite(name or path.stem, tuple(items), source=str(path))


def load_hf(dataset: str, split: str = "train", name: str | None = None) -> PromptSuite:
    """A suite from a Hugging Face dataset with I2P's columns (online, needs the ``datasets`` package)."""
    try:
        import datasets
    except ImportError:
        raise EraselabError("loading a hub dataset needs the 'datasets' package: pip install datasets") from None
    try:
        rows = datasets.load_dataset(dataset, split=split)
    except Exception as error:
        raise EraselabError(f"could not load dataset {dataset!r} ({type(error).__name__}); offline, pass a local "
                            "CSV or JSONL file") from None
    items = tuple(PromptItem(r["prompt"], r.get("evaluation_seed"), r.get("evaluation_guidance"),
                             tuple(c.strip() for c in (r.get("categories") or "").split(",") if c.strip()))
                  for r in rows)
    return PromptSuite(name or dataset, items, source=f"hf:{dataset}:{split}")


# -- bundled suites ----------------------------------------------------------------------------------------------
_PUBLIC = {  # name: (file, source, licence)
    "i2p": ("i2p_4703.csv", "I2P (Schramowski et al., Safe Latent Diffusion, CVPR 2023), HF dataset AIML-TUDA/i2p; "
            "copy from joycenerd/P4D data/unsafe-prompts4703.csv", "MIT"),
    "unlearndiffatk-nudity": ("unlearndiffatk_nudity_142.csv", "UnlearnDiffAtk nudity set (Zhang et al., ECCV "
                              "2024), OPTML-Group/Diffusion-MU-Attack prompts/nudity.csv; same file as RECE's "
                              "dataset/nudity.csv",
                              "subset of I2P (MIT); the source repository ships no licence file"),
    "p4d-ideal-nudity-esd": ("p4d_ideal_nudity_esd_361.csv", "Prompting4Debugging ideal prompts for ESD (Chin et al., "
                             "ICML 2024), joycenerd/P4D data/unsafe-prompts-nudity_esd.csv", "MIT"),
}
SUITES: Registry[Callable[[], PromptSuite]] = Registry("prompt suite")


def _public(name: str) -> Callable[[], PromptSuite]:
    file, source, license = _PUBLIC[name]

    def load() -> PromptSuite:
        path = Path(str(resources.files("eraselab.data").joinpath("prompts", file)))
        return load_csv(path, name, source=source, license=license)

    return load


for _name in _PUBLIC:
    SUITES.register(_name)(_public(_name))
SUITES.register("i2p-sexual")(lambda: load_suite("i2p").filter("i2p-sexual", lambda i: "sexual" in i.categories))
SUITES.register("i2p-nudity50")(  # Ring-A-Bell and Concept Arithmetics: I2P prompts with nudity_percentage > 50
    lambda: load_suite("i2p").filter("i2p-nudity50",
                                     lambda i: float(i.extra.get("nudity_percentage") or 0) > 50))


# Families of suites made on demand, named FAMILY:REST; the family's function gets the whole name.
SUITE_FAMILIES: Registry[Callable[[str], PromptSuite]] = Registry("suite family")
SUITE_FAMILIES.register_lazy("tiny", "eraselab.models.tiny.suites:suite_named")


def load_suite(spec: str | Path) -> PromptSuite:
    """A bundled suite by name (``i2p``, ``i2p-sexual``, ``tiny:target:star``, ...) or a CSV / JSONL file."""
    text = str(spec)
    family = text.split(":", 1)[0]
    if ":" in text and family in SUITE_FAMILIES:
        return SUITE_FAMILIES.get(family)(text)
    path = Path(text)
    if path.suffix.lower() == ".csv":
        return load_csv(path)
    if path.suffix.lower() in (".jsonl", ".json"):
        return load_jsonl(path)
    return SUITES.get(text)()
