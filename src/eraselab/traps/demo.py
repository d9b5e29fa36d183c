"""The trap world end to end: train, generate traps, inject, train a suspect, detect, check calibration.

1. A public corpus trains the tokenizer and the **reference** model, which generates the traps.
2. Traps of every (length, perplexity band) cell are generated with 19 secret siblings each and published at
   1, 10 and 100 repetitions in a private corpus of other chronicles.
3. Two models of the same architecture and recipe train on the private corpus: the **suspect** on the injected
   documents, the **clean** model on the documents without traps.
4. The suspect is tested with and without context; the clean model is the null: its combined test must reject
   at alpha = 0.05 in at most 5% of random draws of the published/sibling roles (calibration).

``eraselab traps demo --out DIR`` writes the models, ``traps.jsonl``, ``key.json``, the published documents,
``report.json`` (everything), ``table.md`` (length x repetitions x score) and ``roc.png``. About five minutes on
a 2-core CPU.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from eraselab.outputs import write_jsonl
from eraselab.traps.detect import detect, group_name, plot_roc, split_roles
from eraselab.traps.evidence import calibration
from eraselab.traps.generate import TrapRequest, generate_traps
from eraselab.traps.inject import inject, write_documents
from eraselab.traps.lm import LmRecipe, save_lm, train_lm, train_tokenizer
from eraselab.traps.world import chronicle_corpus


@dataclass(frozen=True)
class TrapWorld:
    """The demo's grid; the defaults are the measured configuration."""

    lengths: tuple[int, ...] = (16, 48)
    bands: tuple[tuple[float, float], ...] = ((20.0, 60.0), (200.0, 2000.0))
    repetitions: tuple[int, ...] = (1, 10, 100)
    traps_per_cell: int = 8
    siblings: int = 19
    public_documents: int = 2000
    private_documents: int = 6000
    vocab_size: int = 2048
    reference_recipe: LmRecipe = field(default_factory=LmRecipe)
    # The suspect and the clean model see the private corpus once, as a large model sees its pre-training data;
    # with two epochs a trap published once is already seen twice and leaves a trace.
    recipe: LmRecipe = field(default_factory=lambda: LmRecipe(epochs=1))
    calibration_draws: int = 500_000
    seed: int = 0


def run_demo(out: Path, world: TrapWorld = TrapWorld(), progress: bool = True) -> dict:
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    # 1. Public corpus -> tokenizer and reference model (the trap generator).
    public = chronicle_corpus(world.public_documents, seed=world.seed + 1)
    tokenizer = train_tokenizer(public, world.vocab_size)
    reference = train_lm(public, tokenizer, world.reference_recipe, progress)
    save_lm(reference, tokenizer, out / "models" / "reference")
    # 2. Traps per (length, band, repetitions) cell, each cell its own draw of roles.
    traps: list[dict] = []
    repetitions: dict[str, int] = {}
    for length in world.lengths:
        for b, band in enumerate(world.bands):
            for r, count in enumerate(world.repetitions):
                group = f"len{length}-ppl{band[0]:g}-{band[1]:g}-rep{count}"
                request = TrapRequest(length, band, world.traps_per_cell, world.siblings, group=group,
                                      seed=world.seed * 10_000 + length * 100 + b * 10 + r)
                cell = generate_traps(reference, tokenizer, request, "models/reference", progress)
                repetitions.update({t["id"]: count for t in cell if t["role"] == "published"})
                traps.extend(cell)
    write_jsonl(out / "traps.jsonl", traps)
    # 3. Private corpus, injected; suspect and clean model trained alike.
    private = {f"doc{i:05d}": text for i, text in enumerate(chronicle_corpus(world.private_documents, seed=world.seed))}
    published, key = inject(traps, private, repetitions, seed=world.seed)
    write_documents(published, out / "published", like=out / "traps.jsonl")
    (out / "key.json").write_text(json.dumps(key, indent=1))
    suspect = train_lm(list(published.values()), tokenizer, world.recipe, progress)
    save_lm(suspect, tokenizer, out / "models" / "suspect")
    clean = train_lm(list(private.values()), tokenizer, world.recipe, progress)
    save_lm(clean, tokenizer, out / "models" / "clean")
    # 4. Detect, with and without context; the clean model is the null.
    report = {"suspect": detect(key, suspect, tokenizer, reference, docs=published),
              "suspect_context": detect(key, suspect, tokenizer, reference, docs=published, context=True),
              "clean": detect(key, clean, tokenizer, reference, docs=published)}
    traps_ids = [t["id"] for t in key["traps"]]
    report["calibration"] = {}
    for name in report["clean"]["scores"]:
        published_scores, sibling_scores = split_roles(report["clean"]["sequences"], name, traps_ids)
        report["calibration"][name] = calibration(published_scores, sibling_scores, world.calibration_draws,
                                                  seed=world.seed)
    report["seconds"] = time.perf_counter() - started
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "table.md").write_text(power_table(report, key))
    plot_roc(report["suspect"], key, out / "roc.png")
    return report


def _cell(entry: dict) -> str:
    auc, p = entry["auc"], entry["combined_p"]
    bound = "<=" if p <= entry["combined_p_resolution"] else "="  # the exact null's smallest p-value
    return f"{auc['value']:.2f} [{auc['low']:.2f}, {auc['high']:.2f}], p{bound}{p:.1g}"


def power_table(report: dict, key: dict) -> str:
    """Markdown: one row per group (length, band, repetitions), one column per score, for the suspect with and
    without context; then the clean model's calibration."""
    groups = sorted({group_name(t) for t in key["traps"]},
                    key=lambda g: (int(g.split("len")[1].split("-")[0]), g.split("-rep")[0], int(g.split(" x")[1])))
    names = list(report["suspect"]["scores"])
    lines = []
    for label in ("suspect", "suspect_context", "clean"):
        lines += [f"### {label.replace('_', ' with ')}: AUC [95% CI], combined p", "",
                  "| group (length, ppl band, repetitions) | " + " | ".join(names) + " |",
                  "|---|" + "---|" * len(names)]
        for group in groups:
            cells = [_cell(report[label]["scores"][n]["groups"][group]) for n in names]
            lines.append(f"| {group.split(' x')[0].rsplit('-rep', 1)[0]} x{group.split(' x')[1]} | "
                         + " | ".join(cells) + " |")
        lines.append("| all | " + " | ".join(_cell(report[label]["scores"][n]["all"]) for n in names) + " |")
        lines.append("")
    draws = next(iter(report["calibration"].values()))["draws"]
    lines += [f"### calibration on the clean model: rejection rate at alpha 0.05 over {draws:,} random role draws",
              "",
              "| score | exact Fisher null | chi^2 Fisher |", "|---|---|---|"]
    for name, entry in report["calibration"].items():
        exact, chi2 = entry["exact"], entry["chi2"]
        lines.append(f"| {name} | {exact['rejection_rate']:.4f} [{exact['low']:.4f}, {exact['high']:.4f}] | "
                     f"{chi2['rejection_rate']:.4f} [{chi2['low']:.4f}, {chi2['high']:.4f}] |")
    return "\n".join(lines) + "\n"
