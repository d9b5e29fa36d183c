"""Inject published traps into documents and keep the private key (Meeus et al., ICML 2024, Sec. 3.2).

Each published trap is inserted ``repetitions`` times at sentence starts (word boundaries in a document with
no sentence break), its copies spread over different documents as far as there are documents. ``fuzzy = N``
replaces N random tokens of each copy by other vocabulary tokens (of the same leading-space kind), so copies
are not exact duplicates and survive the near-duplicate filtering of data pipelines (the paper's fuzzy
duplicates). The input documents are never modified; the injected ones go to a new directory.

The key is private: the published traps with every copy's document and character offset, their never-published
siblings, the tokenizer fingerprint and the SHA-256 of every injected document, so a later test can prove the
documents it is given are the ones the key describes.

Example (CLI): ``eraselab traps inject --traps traps.jsonl --docs corpus/ --repetitions 100 --seed 0
--out published/ --key key.json``
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from eraselab.config_files import jsonl_records
from eraselab.errors import EraselabError
from eraselab.provenance import provenance
from eraselab.store import seal_holds, sealed

KEY_VERSION = 1


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


JSONL_NAME = "documents.jsonl"  # what `inject` writes for a JSONL corpus


def _read_jsonl(path: Path) -> dict[str, str]:
    return {str(record.get("id", number - 1)): record["text"] for number, record in jsonl_records(path, "text")}


def read_documents(path: Path) -> dict[str, str]:
    """Every layout :func:`write_documents` writes, and the inputs it reads: a directory of ``*.txt`` files, a
    directory holding ``documents.jsonl``, or a JSONL file with a ``text`` field (and optional ``id``)."""
    if path.is_dir():
        texts, jsonl = sorted(path.glob("*.txt")), path / JSONL_NAME
        if jsonl.is_file() and texts:
            raise EraselabError(f"{path} holds both {JSONL_NAME} and .txt files: give the one the key was made from")
        docs = _read_jsonl(jsonl) if jsonl.is_file() else {item.name: item.read_text(encoding="utf-8")
                                                          for item in texts}
    elif path.is_file():
        docs = _read_jsonl(path)
    else:
        raise EraselabError(f"documents not found: {path} (give a directory of .txt files or a .jsonl file)")
    if not any(text.strip() for text in docs.values()):
        raise EraselabError(f"the corpus at {path} is empty: no document has any text")
    return docs


def write_documents(docs: dict[str, str], out: Path, like: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if like.is_dir():
        for name, text in docs.items():
            (out / name).write_text(text, encoding="utf-8")
    else:
        (out / JSONL_NAME).write_text("".join(json.dumps({"id": name, "text": text}) + "\n"
                                                     for name, text in docs.items()), encoding="utf-8")


def _boundaries(text: str) -> list[int]:
    """Character offsets where a sentence starts; word starts when there is no sentence break."""
    sentences = [0, *(m.end() for m in re.finditer(r"[.!?]\s+", text) if m.end() < len(text))]
    return sentences if len(sentences) > 1 else [0, *(m.end() for m in re.finditer(r"\s+", text))]


def _fuzzy_copy(ids: list[int], changes: int, tokenizer: PreTrainedTokenizerBase, rng: random.Random) -> str:
    vocab = tokenizer.get_vocab()
    special = set(tokenizer.all_special_ids)
    by_kind: dict[bool, list[int]] = {True: [], False: []}
    for token, index in sorted(vocab.items(), key=lambda item: item[1]):
        if index not in special:
            by_kind[token.startswith("Ġ")].append(index)
    copy = list(ids)
    for position in rng.sample(range(len(ids)), min(changes, len(ids))):
        kind = tokenizer.convert_ids_to_tokens(copy[position]).startswith("Ġ")
        choices = [t for t in by_kind[kind] if t != copy[position]]
        copy[position] = rng.choice(choices)
    return tokenizer.decode(copy).strip()


def inject(traps: list[dict], docs: dict[str, str], repetitions: int | dict[str, int], seed: int = 0,
           fuzzy: int = 0, tokenizer: PreTrainedTokenizerBase | None = None) -> tuple[dict[str, str], dict]:
    """Insert every published trap; returns the injected documents and the key (a JSON-ready dict)."""
    published = [t for t in traps if t["role"] == "published"]
    if not published:
        raise EraselabError("the traps file holds no published trap")
    if len({t["tokenizer"] for t in traps}) != 1:
        raise EraselabError("the traps file mixes traps made with different tokenizers")
    if fuzzy and tokenizer is None:
        raise EraselabError("--fuzzy needs the tokenizer the traps were made with (--tokenizer)")
    counts = {t["id"]: repetitions if isinstance(repetitions, int) else repetitions[t["id"]] for t in published}
    if min(counts.values()) < 1:
        raise EraselabError("--repetitions must be at least 1")
    rng = random.Random(seed)
    names = [name for name, text in docs.items() if text.strip()]
    # 1. Choose where every copy goes: distinct documents for the copies of one trap, as far as they go.
    insertions: dict[str, list[tuple[int, str, str]]] = {name: [] for name in docs}
    for trap in published:
        order: list[str] = []
        while len(order) < counts[trap["id"]]:
            order.extend(rng.sample(names, len(names)))
        for name in order[:counts[trap["id"]]]:
            position = rng.choice(_boundaries(docs[name]))
            text = _fuzzy_copy(trap["token_ids"], fuzzy, tokenizer, rng) if fuzzy else trap["text"]
            insertions[name].append((position, trap["id"], text))
    # 2. Write each document once, left to right, recording where each copy landed in the new text.
    injected: dict[str, str] = {}
    copies: dict[str, list[dict]] = {t["id"]: [] for t in published}
    for name, text in docs.items():
        pieces, cursor, shift = [], 0, 0
        for position, trap_id, copy in sorted(insertions[name], key=lambda item: item[0]):
            pieces.append(text[cursor:position])
            shift_at = position + shift
            separator = "" if position == 0 or text[position - 1].isspace() else " "
            pieces.append(f"{separator}{copy} ")
            copies[trap_id].append({"document": name, "offset": shift_at + len(separator), "text": copy})
            shift += len(separator) + len(copy) + 1
            cursor = position
        pieces.append(text[cursor:])
        injected[name] = "".join(pieces)
    siblings: dict[str, list[dict]] = {t["id"]: [] for t in published}
    for trap in traps:
        if trap["role"] == "sibling":
            siblings[trap["trap"]].append({k: trap[k] for k in ("id", "text", "token_ids", "perplexity")})
    key = {"version": KEY_VERSION, "seed": seed, "fuzzy": fuzzy, "tokenizer": published[0]["tokenizer"],
           "reference_model": published[0].get("reference_model", ""),
           "documents": {name: sha256(text) for name, text in injected.items()},
           "originals": {name: sha256(text) for name, text in docs.items()},
           "traps": [{**{k: t[k] for k in ("id", "group", "text", "token_ids", "length", "perplexity", "ppl_band")},
                      "repetitions": counts[t["id"]], "copies": copies[t["id"]], "siblings": siblings[t["id"]]}
                     for t in published],
           "provenance": provenance()}
    return injected, sealed(key)


def _token_ids(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value)


def _check_sequence(record: object, where: str, fields: dict[str, type]) -> None:
    if not isinstance(record, dict):
        raise EraselabError(f"{where} must be a mapping")
    for name, kind in fields.items():
        if name == "token_ids":
            if not _token_ids(record.get(name)):
                raise EraselabError(f"{where}.token_ids must be a non-empty list of token ids (integers >= 0)")
        elif not isinstance(record.get(name), kind) or isinstance(record.get(name), bool):
            raise EraselabError(f"{where}.{name} must be a {kind.__name__}")


def check_key(key: object) -> dict:
    """Validate a key's structure (every field detection reads, with its type); raises naming the first bad
    field, so a damaged key is one clear error rather than an IndexError in the middle of scoring."""
    if not isinstance(key, dict) or key.get("version") != KEY_VERSION or not isinstance(key.get("traps"), list):
        raise EraselabError(f"not an eraselab trap key (version {KEY_VERSION})")
    if "seal" in key and not seal_holds(key):
        raise EraselabError("the key was changed after `traps inject` wrote it (its seal does not match)")
    if not key["traps"]:
        raise EraselabError("the key holds no trap")
    if not isinstance(key.get("tokenizer"), str):
        raise EraselabError("key field 'tokenizer' must be a string")
    documents = key.get("documents")
    if not isinstance(documents, dict) or not all(isinstance(v, str) for v in documents.values()):
        raise EraselabError("key field 'documents' must map document names to SHA-256 digests")
    for t, trap in enumerate(key["traps"]):
        where = f"traps[{t}]"
        _check_sequence(trap, where, {"id": str, "group": str, "text": str, "token_ids": list, "repetitions": int,
                                      "copies": list, "siblings": list})
        for c, copy in enumerate(trap["copies"]):
            _check_sequence(copy, f"{where}.copies[{c}]", {"document": str, "offset": int, "text": str})
            if copy["document"] not in documents or copy["offset"] < 0:
                raise EraselabError(f"{where}.copies[{c}] names no injected document, or a negative offset")
        for i, sibling in enumerate(trap["siblings"]):
            _check_sequence(sibling, f"{where}.siblings[{i}]", {"id": str, "text": str, "token_ids": list})
    return key


def read_key(path: Path) -> dict:
    try:
        key = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise EraselabError(f"cannot read the key file {path}: {error}") from None
    try:
        return check_key(key)
    except EraselabError as error:
        raise EraselabError(f"{path}: {error}") from None


def check_documents(key: dict, docs: dict[str, str]) -> None:
    """Refuse documents that are not the injected ones the key describes."""
    wrong = sorted(name for name, digest in key["documents"].items() if sha256(docs.get(name, "")) != digest)
    if wrong:
        shown = ", ".join(wrong[:3]) + (f" and {len(wrong) - 3} more" if len(wrong) > 3 else "")
        raise EraselabError(f"the documents do not match the key: {shown} missing or changed since injection")
