"""Test a suspect language model for membership of the published traps against their secret siblings.

Every published trap and every sibling is scored by every membership score from one forward pass of the
suspect model (and one of the reference model, if given); the scores then go through
:mod:`eraselab.traps.evidence`: ROC AUC with a 95% interval, TPR at 1% and 10% FPR, each trap's exact rank
p-value among its siblings, and their combination into one p-value, over all traps and per group (length,
perplexity band, repetitions).

With ``context=True`` a trap is scored after the text that preceded its first copy in the published document
(Meeus et al. show context makes traps more detectable); its siblings are scored after the same text, so the
comparison stays fair.

Example (CLI): ``eraselab traps detect --key key.json --model SUSPECT --reference-model REF --json``
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from eraselab.errors import EraselabError
from eraselab.traps.evidence import MIN_SIBLINGS, MIN_SIBLINGS_PER_TRAP, membership_test, roc_curve
from eraselab.traps.generate import tokenizer_fingerprint
from eraselab.traps.inject import check_documents
from eraselab.traps.scores import SCORES
from eraselab.traps.scores.stats import token_stats

CONTEXT_TOKENS = 64


def check_tokenizer(key: dict, tokenizer: PreTrainedTokenizerBase, which: str) -> None:
    found = tokenizer_fingerprint(tokenizer)
    if found != key["tokenizer"]:
        raise EraselabError(f"tokenizer mismatch: the traps were made with tokenizer {key['tokenizer']}, the {which} "
                            f"model's is {found}; scores on other tokens would not test these traps")


def check_vocabulary(key: dict, model: PreTrainedModel, which: str) -> None:
    """Every token id of the key must exist in ``model``'s embedding table (a damaged id would index past it)."""
    size = model.get_input_embeddings().num_embeddings
    for trap in key["traps"]:
        for sequence in [trap, *trap["siblings"]]:
            outside = [i for i in sequence["token_ids"] if i >= size]
            if outside:
                raise EraselabError(f"trap {sequence['id']!r} of the key holds token id {outside[0]}, outside the "
                                    f"{which} model's vocabulary ({size} tokens): the key is damaged or not for it")


def group_name(trap: dict) -> str:
    return f"{trap['group']} x{trap['repetitions']}"


def _rows(key: dict, tokenizer: PreTrainedTokenizerBase, docs: dict[str, str] | None) -> list[dict]:
    """One row per sequence to score: published traps and siblings, with the context each is scored after."""
    rows = []
    for trap in key["traps"]:
        context: list[int] = []
        if docs is not None:
            first = trap["copies"][0]
            before = docs[first["document"]][:first["offset"]].rstrip()
            context = tokenizer(before, add_special_tokens=False).input_ids[-CONTEXT_TOKENS:] if before else []
        rows.append({"trap": trap["id"], "role": "published", "ids": trap["token_ids"], "text": trap["text"],
                     "context": context})
        rows.extend({"trap": trap["id"], "role": "sibling", "ids": s["token_ids"], "text": s["text"],
                     "context": context} for s in trap["siblings"])
    return rows


def score_sequences(key: dict, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                    reference: PreTrainedModel | None = None, docs: dict[str, str] | None = None,
                    score_names: list[str] | None = None, batch_size: int = 64) -> tuple[list[dict], list[str]]:
    """Every sequence's score under every score; one forward pass per model."""
    names = score_names or [n for n in SCORES.names() if reference is not None or not SCORES.get(n).needs_reference]
    rows = _rows(key, tokenizer, docs)
    begin = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    args = ([r["ids"] for r in rows], [r["text"] for r in rows], begin, [r["context"] for r in rows], batch_size)
    target = token_stats(model, *args)
    ref = token_stats(reference, *args) if reference is not None else None
    for name in names:
        values = SCORES.get(name).compute(target, ref).tolist()
        for row, value in zip(rows, values, strict=True):
            row[name] = value
    return rows, names


def split_roles(rows: list[dict], name: str, traps: list[str]) -> tuple[list[float], list[list[float]]]:
    by_trap: dict[str, dict] = {t: {"published": None, "siblings": []} for t in traps}
    for row in rows:
        if row["trap"] in by_trap:
            if row["role"] == "published":
                by_trap[row["trap"]]["published"] = row[name]
            else:
                by_trap[row["trap"]]["siblings"].append(row[name])
    return [by_trap[t]["published"] for t in traps], [by_trap[t]["siblings"] for t in traps]


def detect(key: dict, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
           reference: PreTrainedModel | None = None, reference_tokenizer: PreTrainedTokenizerBase | None = None,
           docs: dict[str, str] | None = None, context: bool = False, score_names: list[str] | None = None,
           seed: int = 0) -> dict:
    """The membership report: per score, over all traps and per group."""
    # 1. Refuse what would make the test meaningless.
    check_tokenizer(key, tokenizer, "suspect")
    check_vocabulary(key, model, "suspect")
    if reference is not None:
        check_tokenizer(key, reference_tokenizer or tokenizer, "reference")
        check_vocabulary(key, reference, "reference")
    if context and docs is None:
        raise EraselabError("--context needs the published documents (--docs) to read each trap's preceding text")
    if docs is not None:
        check_documents(key, docs)
    total_siblings = sum(len(t["siblings"]) for t in key["traps"])
    if total_siblings < MIN_SIBLINGS:
        raise EraselabError(f"the key holds {total_siblings} sibling traps in all; at least {MIN_SIBLINGS} are needed "
                            "for the rank test to mean anything")
    for trap in key["traps"]:
        if len(trap["siblings"]) < MIN_SIBLINGS_PER_TRAP:
            raise EraselabError(f"trap {trap['id']!r} has {len(trap['siblings'])} siblings; every published trap needs "
                                f"at least {MIN_SIBLINGS_PER_TRAP} (with K its p-value is never below 1/(K+1): a trap "
                                "without siblings would count as p = 1 whatever the model saw)")
    # 2. Score every sequence (one forward pass per model).
    rows, names = score_sequences(key, model, tokenizer, reference, docs if context else None, score_names)
    # 3. Evidence per score, over all traps and per group.
    groups: dict[str, list[str]] = defaultdict(list)
    for trap in key["traps"]:
        groups[group_name(trap)].append(trap["id"])
    all_traps = [t["id"] for t in key["traps"]]
    report: dict = {"context": context, "scores": {}, "groups": sorted(groups)}
    for name in names:
        published, siblings = split_roles(rows, name, all_traps)
        entry = {"all": membership_test(published, siblings, seed), "groups": {}}
        for group, trap_ids in sorted(groups.items()):
            group_published, group_siblings = split_roles(rows, name, trap_ids)
            if sum(len(s) for s in group_siblings) >= MIN_SIBLINGS:
                entry["groups"][group] = membership_test(group_published, group_siblings, seed)
        report["scores"][name] = entry
    report["sequences"] = [{k: v for k, v in row.items() if k not in ("ids", "context")} for row in rows]
    return report


def plot_roc(report: dict, rows_key: dict, out: Path) -> Path:
    """One ROC curve per score over all traps (published vs. siblings), with the chance line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(4.5, 4.5))
    traps = [t["id"] for t in rows_key["traps"]]
    for name, entry in report["scores"].items():
        published, siblings = split_roles(report["sequences"], name, traps)
        fpr, tpr = roc_curve(published, [s for group in siblings for s in group])
        axes.plot(fpr, tpr, label=f"{name} (AUC {entry['all']['auc']['value']:.2f})")
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":")
    axes.set(xlabel="false-positive rate", ylabel="true-positive rate", title="published traps vs. siblings")
    axes.legend(fontsize=8)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.partial.png")
    try:
        figure.savefig(staging, dpi=120)
    except OSError as error:
        raise EraselabError(f"cannot write the ROC plot {out}: {error.strerror or error}") from None
    finally:
        plt.close(figure)
    staging.replace(out)  # whole or absent
    return out
