"""``eraselab traps ...``: generate, inject, detect, power, demo. Thin verbs over :mod:`eraselab.traps`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from eraselab.cli_support import user_errors
from eraselab.config_files import jsonl_records
from eraselab.errors import EraselabError

traps_app = typer.Typer(no_args_is_help=True,
                        help="Copyright traps for language models: generate, inject, detect with a calibrated test.")


def _band(text: str) -> tuple[float, float]:
    try:
        low, high = (float(part) for part in text.split(":"))
    except ValueError:
        raise EraselabError(f"--ppl-band must look like LO:HI (e.g. 20:60), got {text!r}") from None
    return low, high


TRAP_FIELDS = {"id": str, "role": str, "trap": str, "group": str, "text": str, "token_ids": list, "tokenizer": str}


def _read_traps(path: Path) -> list[dict]:
    """The records of a traps file from `traps generate`, each checked for the fields injection reads."""
    if not path.is_file():
        raise EraselabError(f"traps file {path} does not exist")
    records = []
    for number, record in jsonl_records(path):
        bad = [name for name, kind in TRAP_FIELDS.items() if not isinstance(record.get(name), kind)]
        if bad or record["role"] not in ("published", "sibling"):
            what = f"field {bad[0]!r} missing or of the wrong type" if bad else f"role {record['role']!r}"
            raise EraselabError(f"{path}, line {number}: not a trap from `traps generate` ({what})")
        records.append(record)
    return records


@traps_app.command("generate")
@user_errors
def generate_command(
    reference_model: Annotated[str, typer.Option(help="Causal LM that samples the traps: local directory or hub id.")],
    out: Annotated[Path, typer.Option(help="Output JSONL: published traps and their secret siblings.")],
    length: Annotated[int, typer.Option(help="Tokens per trap (the paper: 25, 50, 100).")] = 64,
    ppl_band: Annotated[str, typer.Option(help="Perplexity band LO:HI under the reference model.")] = "20:60",
    count: Annotated[int, typer.Option(help="Traps to publish.")] = 20,
    siblings: Annotated[int, typer.Option(help="Secret sibling traps per published trap (controls).")] = 19,
    seed: Annotated[int, typer.Option(help="Seed of the sampling and of the role draw.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
) -> None:
    """Sample trap sequences in a perplexity band, with secret siblings drawn from the same generator.

    Example: eraselab traps generate --reference-model DIR --length 48 --ppl-band 20:60 --count 20
    --siblings 19 --out traps.jsonl
    """
    from eraselab.outputs import check_writable, write_jsonl
    from eraselab.traps.generate import TrapRequest, generate_traps
    from eraselab.traps.lm import load_lm

    request = TrapRequest(length, _band(ppl_band), count, siblings, seed)
    check_writable(out, "output file")  # before the model loads
    model, tokenizer = load_lm(reference_model)
    records = generate_traps(model, tokenizer, request, reference_model, progress=not as_json)
    write_jsonl(out, records)  # whole or absent
    summary = {"out": str(out), "published": count, "siblings": count * siblings,
               "temperatures": sorted({r["temperature"] for r in records})}
    typer.echo(json.dumps(summary) if as_json else f"wrote {count} traps and {count * siblings} siblings to {out}")


@traps_app.command("inject")
@user_errors
def inject_command(
    traps: Annotated[Path, typer.Option(help="Traps JSONL from `traps generate`.")],
    docs: Annotated[Path, typer.Option(help="Documents: a directory of .txt files or a JSONL file with 'text'.")],
    out: Annotated[Path, typer.Option(help="Directory for the injected documents (the originals are untouched).")],
    key: Annotated[Path, typer.Option(help="Private key file to write (keep it secret).")],
    repetitions: Annotated[int, typer.Option(help="Copies of each published trap.")] = 100,
    fuzzy: Annotated[int, typer.Option(help="Tokens replaced in each copy (0: exact copies).")] = 0,
    tokenizer: Annotated[str | None, typer.Option(help="Tokenizer for --fuzzy (default: the generator's).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the insertion points and fuzzy replacements.")] = 0,
) -> None:
    """Insert each published trap R times into the documents and write the private key.

    Example: eraselab traps inject --traps traps.jsonl --docs corpus/ --repetitions 100 --out published/ --key key.json
    """
    from eraselab.outputs import atomic_write_text, check_writable, staged_output
    from eraselab.traps.inject import inject, read_documents, write_documents

    check_writable(out)
    check_writable(key, "key file")
    records = _read_traps(traps)
    documents = read_documents(docs)
    loaded = None
    if fuzzy:
        from transformers import AutoTokenizer

        source = tokenizer or records[0].get("reference_model", "")
        try:
            loaded = AutoTokenizer.from_pretrained(source)
        except OSError:
            raise EraselabError(f"cannot load the tokenizer {source!r} for --fuzzy; give --tokenizer") from None
    injected, secret = inject(records, documents, repetitions, seed, fuzzy, loaded)
    with staged_output(out) as staging:
        write_documents(injected, staging, like=docs)
    atomic_write_text(key, json.dumps(secret, indent=1))
    typer.echo(f"injected {len(secret['traps'])} traps x {repetitions} into {len(injected)} documents in {out}; "
               f"key {key}")


def summary_line(name: str, test: dict) -> str:
    """One score's line of the detect summary; a p-value at the exact null's floor prints as the bound it is."""
    auc, p = test["auc"], test["combined_p"]
    shown = f"<={p:.2g}" if p <= test["combined_p_resolution"] else f"{p:.2g}"
    return (f"{name:16s} {auc['value']:.3f} [{auc['low']:.3f}, {auc['high']:.3f}] "
            f"{test['tpr_at_1pct_fpr']:9.3f} {test['tpr_at_10pct_fpr']:10.3f} {shown:>11s}")


@traps_app.command("detect")
@user_errors
def detect_command(
    key: Annotated[Path, typer.Option(help="Key file from `traps inject`.")],
    model: Annotated[str, typer.Option(help="Suspect causal LM: local directory or hub id.")],
    reference_model: Annotated[str | None, typer.Option(help="Reference LM for the reference-ratio score.")] = None,
    docs: Annotated[Path | None, typer.Option(help="The injected documents (checked against the key).")] = None,
    context: Annotated[bool, typer.Option(help="Score each trap after its preceding text (needs --docs).")] = False,
    roc: Annotated[Path | None, typer.Option(help="Write the ROC plot (PNG) here.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the AUC interval and of the exact null.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full report as JSON.")] = False,
) -> None:
    """Test a suspect model for the published traps against their siblings: AUC, TPR at low FPR, p-values.

    Example: eraselab traps detect --key key.json --model SUSPECT --reference-model REF --docs published/ --context
    """
    from eraselab.outputs import check_writable
    from eraselab.traps.detect import detect, plot_roc
    from eraselab.traps.inject import read_documents, read_key
    from eraselab.traps.lm import load_lm

    if roc:
        check_writable(roc, "ROC plot file")  # before the models load, not after the detection ran
    secret = read_key(key)
    suspect, tokenizer = load_lm(model)
    reference, reference_tokenizer = load_lm(reference_model) if reference_model else (None, None)
    documents = read_documents(docs) if docs else None
    report = detect(secret, suspect, tokenizer, reference, reference_tokenizer, documents, context, seed=seed)
    if as_json:  # the report first: an optional plot that fails must not lose it
        typer.echo(json.dumps(report))
    else:
        typer.echo(f"{'score':16s} {'AUC [95% CI]':22s} {'TPR@1%FPR':>9s} {'TPR@10%FPR':>10s} {'combined p':>11s}")
        for name, entry in report["scores"].items():
            typer.echo(summary_line(name, entry["all"]))
    if roc:
        plot_roc(report, secret, roc)


@traps_app.command("power")
@user_errors
def power_command(
    effect: Annotated[float, typer.Option(help="Per-trap effect size d (detect reports it per group).")],
    traps: Annotated[int, typer.Option(help="Published traps.")] = 20,
    siblings: Annotated[int, typer.Option(help="Siblings per trap.")] = 19,
    alpha: Annotated[float, typer.Option(help="Target combined p-value.")] = 0.001,
    draws: Annotated[int, typer.Option(help="Simulated publications.")] = 2000,
    seed: Annotated[int, typer.Option(help="Seed of the simulation.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Power of the combined test, and the traps needed for 80% power, for an effect size.

    Example: eraselab traps power --effect 1.0 --traps 20 --siblings 19 --alpha 0.001
    """
    from eraselab.traps.power import simulate_power, traps_needed

    result = simulate_power(effect, traps, siblings, alpha, draws, seed)
    result["traps_for_80pct_power"] = traps_needed(effect, siblings, alpha, 0.8, seed=seed)
    if as_json:
        typer.echo(json.dumps(result))
        return
    needed = result["traps_for_80pct_power"]
    typer.echo(f"power {result['power']:.3f} (median combined p {result['median_p']:.2g}) with {traps} traps x "
               f"{siblings} siblings at d={effect:g}, alpha={alpha:g}; "
               + (f"{needed} traps give 80% power" if needed else "no number of traps up to 2000 gives 80% power"))


@traps_app.command("demo")
@user_errors
def demo_command(
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("eraselab-traps-demo"),
    seed: Annotated[int, typer.Option(help="Seed of corpora, training, traps and injection.")] = 0,
) -> None:
    """The trap world end to end: train, generate, inject, train a suspect, detect, check calibration.

    Example: eraselab traps demo --out traps-demo
    """
    from eraselab.outputs import writable_directory
    from eraselab.traps.demo import TrapWorld, run_demo

    run_demo(writable_directory(out), TrapWorld(seed=seed))
    typer.echo((out / "table.md").read_text())
    typer.echo(f"wrote {out / 'report.json'}, {out / 'table.md'} and {out / 'roc.png'}")
