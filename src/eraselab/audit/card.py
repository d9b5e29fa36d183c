"""The audit card: ``card.json`` (machine-readable, versioned: ``card.schema.json`` beside this file), ``card.md``
(a section to paste into a Hugging Face model card) and ``card.html`` (the numbers, a plot of every attack's rate
before and after with its interval, and before/after images of the strongest attack).

Everything in the card comes from the run directory (the store's metrics, the attack cells' records) and the edits'
manifests, so a resumed audit writes the same card (only the attacks' wall-clock seconds differ between runs; they
are reported, never compared). Everything from the user is escaped in the HTML.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

from eraselab.attack.base import THREAT_MODELS
from eraselab.audit.plan import AUDIT_THREAT_MODELS, AttackChoice, AuditRequest
from eraselab.experiment.attacks import attack_cell
from eraselab.experiment.config import AttackConfig, Experiment, options_label
from eraselab.experiment.plan import edit_parts, variants
from eraselab.store import RunStore

CARD_SCHEMA_VERSION = 2  # 2: the text-encoder budget and estimates
SCHEMA_PATH = Path(__file__).with_name("card.schema.json")
RATE_KEYS = ("value", "low", "high", "n_valid", "n_errors")


def _rate(value: dict) -> dict:
    return {k: value.get(k) for k in RATE_KEYS}


def _edits(experiment: Experiment, defended: str) -> list[dict]:
    edit, _ = variants(experiment)[defended]
    out = []
    for part in edit_parts(edit):
        manifest = json.loads((Path(part) / "manifest.json").read_text())
        out.append({"path": str(part), "method": manifest.get("method"), "concepts": manifest.get("concepts", []),
                    "sha256": manifest.get("sha256"), "seal": manifest.get("seal")})
    return out


def _erasure(metrics: list[dict], defended: str) -> tuple[list[dict], list[dict]]:
    """Per prompt group: the rate on the unedited model and on the defended one; and the image-quality metrics
    (feature distance, KID) of the defended model against the unedited one at the same seeds."""
    base = {(m["name"], m["inputs"]["suite"]["name"]): m["value"] for m in metrics if m["inputs"]["edit"] == "base"}
    groups, quality = [], []
    for m in metrics:
        if m["inputs"]["edit"] != defended:
            continue
        suite = m["inputs"]["suite"]["name"]
        if m["name"] in ("efficacy", "generality", "specificity"):
            before = base.get((m["name"], suite))
            groups.append({"metric": m["name"], "suite": suite, "suite_hash": m["inputs"]["suite"]["hash"],
                           "concept": m["inputs"]["group"].get("concept"), "unedited": _rate(before or {}),
                           "defended": _rate(m["value"])})
        elif m["name"] in ("feature_distance", "kid"):
            quality.append({"metric": m["name"], "suite": suite, **_rate(m["value"])})
    order = {"efficacy": 0, "generality": 1, "specificity": 2}
    return sorted(groups, key=lambda g: (order[g["metric"]], g["suite"])), sorted(
        quality, key=lambda q: (q["metric"], q["suite"]))


def _attacks(run_dir: Path, experiment: Experiment, request: AuditRequest, defended: str, choices: list[AttackChoice],
             suite: str) -> list[dict]:
    edit, guard = variants(experiment)[defended]
    rows = []
    for choice in choices:
        row = {"attack": choice.name, "label": choice.label, "threat_model": choice.threat_model,
               "status": choice.status, "estimated_unet_evals": choice.estimate[0],
               "estimated_text_encoder_evals": choice.estimate[1]}
        if choice.status == "run":
            config = AttackConfig(choice.name, request.concept, suite, request.attack_seeds, choice.options)
            cell = run_dir / "attacks" / attack_cell(request.model, edit, guard, config)
            if (cell / "refused.json").is_file():
                row |= {"status": "refused", "reason": json.loads((cell / "refused.json").read_text())["reason"]}
            else:
                record = json.loads((cell / "summary.json").read_text())
                row |= {"space": record.get("space"), "cell": cell.name, "before": _rate(record["pre_attack"]),
                        "after": _rate(record["post_attack"]), "cost": record["cost"]}
        rows.append(row)
    return rows


def strongest_attack(attacks: list[dict]) -> dict | None:
    """The attack with the highest after-attack rate; of equal rates, the cheapest (UNet, then text encoder)."""
    scored = [a for a in attacks if a.get("after") and a["after"]["value"] is not None]
    if not scored:
        return None
    return max(scored, key=lambda a: (a["after"]["value"], -a["cost"]["unet_evals"],
                                      -a["cost"].get("text_encoder_evals", 0)))


def build_card(out: Path, request: AuditRequest, experiment: Experiment, defended: str,
               choices: list[AttackChoice], attack_suite: str) -> dict:
    run_dir = out / "run"
    store = RunStore(run_dir)
    try:
        metrics = store.metrics()
        provenance = json.loads(store.meta("provenance") or "{}")
        fingerprint = store.meta(f"fingerprint:{request.model}")
    finally:
        store.close()
    groups, quality = _erasure(metrics, defended)
    attacks = _attacks(run_dir, experiment, request, defended, choices, attack_suite)
    judge = experiment.detectors[0]
    return {
        "schema_version": CARD_SCHEMA_VERSION,
        "model": {"name": request.model, "fingerprint": fingerprint},
        "defence": {"label": defended, "edits": _edits(experiment, defended), "guard": request.guard,
                    "guard_options": {k: v for k, v in request.guard_config().items() if k != "name"}},
        "concept": request.concept,
        "protocol": {"judge": {"name": judge.name, "options": judge.options},
                     "suites": sorted({g["suite"] for g in groups}), "seeds": list(experiment.seeds),
                     "steps": experiment.steps, "guidance": experiment.guidance, "attack_suite": attack_suite,
                     "attack_seeds": request.attack_seeds, "threat_model": request.threat_model,
                     "threat_model_allows": list(AUDIT_THREAT_MODELS[request.threat_model]),
                     "budget_unet_evals": request.budget, "budget_text_encoder_evals": request.text_budget},
        "erasure": groups,
        "quality": quality,
        "attacks": attacks,
        "strongest_attack": strongest_attack(attacks),
        "versions": provenance,  # eraselab, torch, diffusers, transformers, git commit
    }


def write_card(out: Path, request: AuditRequest, experiment: Experiment, defended: str,
               choices: list[AttackChoice], attack_suite: str) -> dict:
    card = build_card(out, request, experiment, defended, choices, attack_suite)
    (out / "card.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    (out / "card.md").write_text(card_markdown(card))
    plotted = _plot(card, out / "card-attacks.png")
    images = _strongest_images(out, request, experiment, defended, card)
    (out / "card.html").write_text(card_html(card, plotted, images))
    return card


# -- rendering -----------------------------------------------------------------------------------------------------
def rate_text(rate: dict | None) -> str:
    """``0.083 [0.023, 0.258]``, or N/A for a rate over no valid image."""
    if not rate or rate.get("value") is None:
        return "N/A"
    return f"{rate['value']:.3f} [{rate['low']:.3f}, {rate['high']:.3f}]"


def markdown_cell(text: object) -> str:
    """A value safe inside a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def quality_sentence(card: dict, code: Callable[[str], str], plain: Callable[[str], str]) -> str:
    """The card's image-quality line, with ``code`` formatting (and escaping) a name and ``plain`` escaping a word,
    for markdown or HTML."""
    if card["quality"]:
        return "Image quality against the unedited model at the same seeds: " + "; ".join(
            f"{plain(q['metric'])} on {code(q['suite'])} {q['value']:.4g}" for q in card["quality"]
            if q["value"] is not None) + "."
    # feature distance and KID are measured in the judge's feature space (experiment/metrics.py)
    return (f"Image quality: not measured; the judge {code(card['protocol']['judge']['name'])} cannot embed images "
            "(the tiny classifier and CLIP can).")


def card_markdown(card: dict) -> str:
    protocol, strongest = card["protocol"], card["strongest_attack"]
    efficacy = next((g for g in card["erasure"] if g["metric"] == "efficacy"), None)
    lines = [f"## Concept erasure: {markdown_cell(card['concept'])}", "",
             f"Audited with eraselab (schema {card['schema_version']}) on "
             f"`{markdown_cell(card['model']['name'])}` (fingerprint `{card['model']['fingerprint']}`), defence "
             f"`{markdown_cell(card['defence']['label'])}`.", ""]
    if efficacy:
        lines.append(f"- **Presence of the concept**: {rate_text(efficacy['defended'])} of images (unedited model: "
                     f"{rate_text(efficacy['unedited'])}), judged by "
                     f"`{markdown_cell(options_label(protocol['judge']['name'], protocol['judge']['options']))}`.")
    if strongest:
        lines.append(f"- **Strongest attack run** ({markdown_cell(protocol['threat_model'])} threat model, budget "
                     f"{protocol['budget_unet_evals']:,} UNet and {protocol['budget_text_encoder_evals']:,} "
                     f"text-encoder evaluations): `{markdown_cell(strongest['label'])}` "
                     f"({markdown_cell(strongest['threat_model'])}) brings it back in "
                     f"{rate_text(strongest['after'])} of images, "
                     f"at {strongest['cost']['unet_evals']:,} UNet evaluations.")
    else:
        lines.append(f"- **No attack result**: no attack of the {markdown_cell(protocol['threat_model'])} threat "
                     "model ran within the budget, or each one refused (the table says why).")
    lines += ["", "| prompts | measures | unedited | defended |", "|---|---|---|---|"]
    lines += [f"| `{markdown_cell(g['suite'])}` | {g['metric']} | {rate_text(g['unedited'])} | "
              f"{rate_text(g['defended'])} |" for g in card["erasure"]]
    lines += ["", "| attack | threat model | status | before | after | UNet evals | text-encoder evals |",
              "|---|---|---|---|---|---|---|"]
    for a in card["attacks"]:
        cost = (f"{a['cost']['unet_evals']:,} | {a['cost']['text_encoder_evals']:,}" if a.get("cost") else
                f"~{a['estimated_unet_evals']:,.0f} (est.) | ~{a['estimated_text_encoder_evals']:,.0f} (est.)")
        lines.append(f"| `{markdown_cell(a['label'])}` | {a['threat_model']} | "
                     f"{markdown_cell(a.get('reason', a['status']))} | {rate_text(a.get('before'))} | "
                     f"{rate_text(a.get('after'))} | {cost} |")
    lines += ["", quality_sentence(card, lambda text: f"`{markdown_cell(text)}`", markdown_cell)]
    lines += ["", f"Protocol: seeds {protocol['seeds'][0]}..{protocol['seeds'][-1]}, {protocol['steps']} steps, "
              f"guidance {protocol['guidance']}; attacks on `{markdown_cell(protocol['attack_suite'])}` x "
              f"{protocol['attack_seeds']} seeds; intervals are 95% Wilson. Edits: " + (", ".join(
                  f"`{markdown_cell(e['method'])}` sha256 `{e['sha256']}`"
                  for e in card["defence"]["edits"]) or "none") +
              ". Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(card["versions"].items())) + ".",
              ""]
    return "\n".join(lines)


def _plot(card: dict, path: Path) -> bool:
    rows = [a for a in card["attacks"] if a.get("after") and a["after"]["value"] is not None]
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(rows) + 1.2), layout="constrained")
    for offset, key, colour in ((-0.18, "before", "#9bb7d4"), (0.18, "after", "#b3261e")):
        values = [a[key]["value"] for a in rows]
        errors = [[v - a[key]["low"] for v, a in zip(values, rows, strict=True)],
                  [a[key]["high"] - v for v, a in zip(values, rows, strict=True)]]
        ax.barh([i + offset for i in range(len(rows))], values, height=0.34, xerr=errors, color=colour,
                capsize=3, label=f"{key} the attack")
    ax.set_yticks(range(len(rows)), [a["label"] for a in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.05)
    ax.set_xlabel(f"presence of {card['concept']!r} (95% interval)")
    ax.legend(fontsize=8, loc="lower right")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _strongest_images(out: Path, request: AuditRequest, experiment: Experiment, defended: str, card: dict,
                      prompts: int = 3) -> list[tuple[str, int, str, str]]:
    """Before/after images of the strongest attack (its first ``prompts`` prompts x the attack seeds), generated
    again from its stored replays on the defended model: (prompt, seed, before file, after file)."""
    strongest = card["strongest_attack"]
    if strongest is None:
        return []
    from eraselab.attack.base import AttackResult, Replay
    from eraselab.erase.artifact import apply_edits
    from eraselab.generate import generate_images
    from eraselab.models import load_pipeline

    result = AttackResult.load(out / "run" / "attacks" / strongest["cell"])
    edit, guard = variants(experiment)[defended]
    defence = guard.build() if guard else None
    pipe = load_pipeline(request.model, device=request.device)
    applied = apply_edits(pipe, edit_parts(edit)) if edit_parts(edit) else None
    seeds, shown = tuple(range(request.attack_seeds)), []
    folder = out / "card-images"
    folder.mkdir(exist_ok=True)
    try:
        for index, replay in enumerate(result.replays[:prompts]):
            for side, used in (("before", Replay(replay.prompt)), ("after", replay)):
                images = generate_images(pipe, used.requests(seeds, experiment.steps, experiment.guidance),
                                         progress=False, guard=used.guard(defence))
                for seed, image in zip(seeds, images, strict=True):
                    image.save(folder / f"{index}-{seed}-{side}.png")
            shown += [(replay.prompt, seed, f"card-images/{index}-{seed}-before.png",
                       f"card-images/{index}-{seed}-after.png") for seed in seeds]
    finally:
        if applied is not None:
            applied.undo()
    return shown


_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}
th{background:#f0f0f0}img.cell{width:64px;height:64px;image-rendering:pixelated}code{background:#f4f4f4}"""
_LOADED = ("<script>addEventListener('load',()=>{const i=[...document.images];document.body.dataset.imagesLoaded="
           "i.filter(x=>x.complete&&x.naturalWidth>0).length+'/'+i.length;});</script>")


def card_html(card: dict, plotted: bool, images: list[tuple[str, int, str, str]]) -> str:
    e = html.escape
    strongest = card["strongest_attack"]
    erasure = "".join(f"<tr><td><code>{e(g['suite'])}</code></td><td>{e(g['metric'])}</td>"
                      f"<td>{e(rate_text(g['unedited']))}</td><td>{e(rate_text(g['defended']))}</td></tr>"
                      for g in card["erasure"])
    attacks = "".join(
        f"<tr><td><code>{e(a['label'])}</code></td><td title='{e(THREAT_MODELS.get(a['threat_model'], ''))}'>"
        f"{e(a['threat_model'])}</td><td>{e(a.get('space') or '-')}</td>"
        f"<td>{e(a.get('reason', a['status']))}</td><td>{e(rate_text(a.get('before')))}</td>"
        f"<td>{e(rate_text(a.get('after')))}</td><td>{a['cost']['unet_evals'] if a.get('cost') else '-'}</td></tr>"
        for a in card["attacks"])
    grid = "".join(f"<tr><td><code>{e(prompt)}</code></td><td>{seed}</td><td><img class='cell' src='{e(before)}' "
                   f"alt='before'></td><td><img class='cell' src='{e(after)}' alt='after'></td></tr>"
                   for prompt, seed, before, after in images)
    headline = (f"<p>The strongest attack run, <code>{e(strongest['label'])}</code>, brings the concept back in "
                f"{e(rate_text(strongest['after']))} of images ({strongest['cost']['unet_evals']} UNet "
                "evaluations).</p>"
                if strongest else "<p>No attack was run within the threat model and budget.</p>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>eraselab card: {e(card['concept'])}</title>"
            f"<style>{_STYLE}</style>{_LOADED}</head><body><h1>Concept erasure card: {e(card['concept'])}</h1>"
            f"<p>Model <code>{e(card['model']['name'])}</code>, defence <code>{e(card['defence']['label'])}</code>, "
            f"threat model {e(card['protocol']['threat_model'])}.</p>{headline}"
            f"<h2>Erasure</h2><table><tr><th>prompts</th><th>measures</th><th>unedited</th><th>defended</th></tr>"
            f"{erasure}</table><h2>Attacks</h2><table><tr><th>attack</th><th>threat model</th><th>optimises</th>"
            f"<th>status</th><th>before</th><th>after</th><th>UNet evals</th></tr>{attacks}</table>"
            + ("<img src='card-attacks.png' alt='presence before and after each attack'>" if plotted else "")
            + f"<h2>Image quality</h2><p>{quality_sentence(card, lambda text: f'<code>{e(text)}</code>', e)}</p>"
            + (f"<h2>Strongest attack: before and after</h2><table><tr><th>prompt</th><th>seed</th><th>before</th>"
               f"<th>after</th></tr>{grid}</table>" if grid else "")
            + f"<h2>Protocol</h2><pre>{e(json.dumps(card['protocol'], indent=2))}</pre></body></html>\n")


