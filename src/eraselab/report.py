"""``eraselab report RUN_DIR``: ``report.html`` and ``summary.json`` from a RunStore.

The page shows every metric with its 95% interval, valid and failed counts (a rate over no valid image is
"N/A", never 0), the pinned protocol (detector, version and settings; suite name, size and hash; seeds,
steps, guidance; package versions and git commit), image grids per prompt group at the same seeds, and a plot
of each metric with its interval. Everything that comes from the user (prompts, names, paths) is escaped.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterator
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

from eraselab.errors import EraselabError
from eraselab.store import RunStore

_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}
th{background:#f0f0f0}.na{color:#b3261e;font-weight:600}code{background:#f4f4f4;padding:0 3px}
.grid td{border:none;text-align:center;font-size:11px}.grid img{width:64px;height:64px;image-rendering:pixelated}
.miss{outline:2px solid #b3261e}.hit{outline:2px solid #17702a}"""


# Records on <body> how many images decoded, so a headless browser test can check that every one loaded.
_LOADED = ("<script>addEventListener('load',()=>{const i=[...document.images];document.body.dataset.imagesLoaded="
           "i.filter(x=>x.complete&&x.naturalWidth>0).length+'/'+i.length;});</script>")


def _fmt(value: float | None) -> str:
    return "N/A" if value is None else f"{value:.3f}"


def short_name(label: str) -> str:
    """A variant's label with each part's directories dropped: ``edits/uce+edits/safegen`` -> ``uce+safegen``
    (a stack of edits, or an edit under a guard, is named by its parts)."""
    return "+".join(Path(part).name or part for part in label.split("+"))


def _metric_label(metric: dict) -> str:
    inputs = metric["inputs"]
    edit, model = short_name(inputs["edit"]), Path(inputs["model"]).name or inputs["model"]
    return f"{model}/{edit} {metric['name']} {inputs['suite']['name']} ({inputs['detector']})"


def _same_cell(a: dict, b: dict) -> bool:
    """Two metric inputs that differ at most in the edit."""
    keys = ("model", "detector", "group")
    return all(a[k] == b[k] for k in keys) and a["suite"]["hash"] == b["suite"]["hash"]


def _tradeoff(metrics: list[dict], path: Path) -> bool:
    """Efficacy against specificity, one point per (model, edit): the erasure/preservation trade-off."""
    points: dict[tuple[str, str], dict[str, list[float]]] = {}
    for m in metrics:
        if m["name"] in ("efficacy", "specificity") and m["value"].get("value") is not None:
            key = (Path(m["inputs"]["model"]).name or m["inputs"]["model"], short_name(m["inputs"]["edit"]))
            points.setdefault(key, {}).setdefault(m["name"], []).append(m["value"]["value"])
    points = {k: v for k, v in points.items() if "efficacy" in v and "specificity" in v}
    if not points:
        return False
    fig, ax = plt.subplots(figsize=(5, 4), layout="constrained")
    for (model, edit), values in points.items():
        x = sum(values["specificity"]) / len(values["specificity"])
        y = sum(values["efficacy"]) / len(values["efficacy"])
        ax.scatter([x], [y])
        ax.annotate(f"{model}/{edit}", (x, y), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("specificity (higher: more preserved)")
    ax.set_ylabel("efficacy: target presence (lower: more erased)")
    ax.set_xlim(0, 1.05)
    ax.set_ylim(0, 1.05)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


RATES = ("presence", "efficacy", "generality", "specificity", "presence_change")  # plotted on one [-1, 1] axis


def _plot(metrics: list[dict], path: Path) -> bool:
    """Rates with their intervals (distances and CLIP scores, on other scales, stay in the table)."""
    rows = [m for m in metrics if m["name"] in RATES and m["value"].get("value") is not None]
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(rows) + 1.2), layout="constrained")
    values = [m["value"]["value"] for m in rows]
    low = [m["value"]["value"] - (m["value"].get("low") if m["value"].get("low") is not None else m["value"]["value"])
           for m in rows]
    high = [(m["value"].get("high") if m["value"].get("high") is not None else m["value"]["value"])
            - m["value"]["value"] for m in rows]
    ax.barh(range(len(rows)), values, xerr=[low, high], color="#4a78b5", capsize=3)
    ax.set_yticks(range(len(rows)), [_metric_label(m) for m in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("value (95% interval)")
    ax.set_xlim(min(0.0, min(v - lo for v, lo in zip(values, low, strict=True))),
                max(1.0, max(v + h for v, h in zip(values, high, strict=True))))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _image(store: RunStore, run_dir: Path, item: dict, label: str) -> str:
    e = html.escape
    if item["image"] is None:
        return f"{e(label)} missing"
    src = store.image_path(item["image"]).relative_to(run_dir).as_posix()
    css = "" if item["flag"] is None else ("hit" if item["flag"] else "miss")
    verdict = "error" if item["flag"] is None else ("present" if item["flag"] else "absent")
    return f'<img class="{css}" src="{e(src)}" alt="{e(item["prompt"])}"><br>{e(label)}: {verdict}'


def _grid(store: RunStore, run_dir: Path, metric: dict, base: dict | None = None, max_prompts: int = 6,
          max_seeds: int = 8) -> str:
    """Rows: prompts; columns: seeds; with ``base``, each cell shows the base image above the edited one."""
    e = html.escape
    items = metric["value"].get("items", [])
    pairs = zip(items, base["value"]["items"], strict=True) if base else ((i, None) for i in items)
    rows: dict[str, list[tuple[dict, dict | None]]] = {}
    for item, base_item in pairs:
        rows.setdefault(item["prompt"], []).append((item, base_item))
    out = []
    for prompt, cells in list(rows.items())[:max_prompts]:
        html_cells = []
        for item, base_item in cells[:max_seeds]:
            top = _image(store, run_dir, base_item, "base") + "<br>" if base_item else ""
            bottom = _image(store, run_dir, item, "edit" if base_item else "image")
            html_cells.append(f"<td>seed {item['seed']}<br>{top}{bottom}</td>")
        out.append(f"<tr><th><code>{e(prompt) or '(empty prompt)'}</code></th>{''.join(html_cells)}</tr>")
    return f'<table class="grid">{"".join(out)}</table>'


def write_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.html`` and ``summary.json`` into ``run_dir``; returns their paths."""
    run_dir = Path(run_dir)
    if not (run_dir / "store.sqlite").is_file():
        raise EraselabError(f"{run_dir} is not a run directory (no store.sqlite)")
    store = RunStore(run_dir)
    try:
        store.check_images()  # the report shows the images its numbers were judged on, or refuses
        metrics = store.metrics()
        experiment = json.loads(store.meta("experiment") or "{}")
        provenance = json.loads(store.meta("provenance") or "{}")
        summary = {"experiment": experiment, "provenance": provenance, "counts": store.counts(),
                   "metrics": [{"name": m["name"], "inputs": m["inputs"],
                                "value": {k: v for k, v in m["value"].items() if k not in ("items", "per_item")}}
                               for m in metrics]}
        summary_path = run_dir / "summary.json"
        summary_path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        plots = [name for name, draw in (("report-metrics.png", _plot), ("report-tradeoff.png", _tradeoff))
                 if draw(metrics, run_dir / name)]
        page = _page(store, run_dir, experiment, provenance, metrics, plots)
    finally:
        store.close()
    report_path = run_dir / "report.html"
    report_path.write_text(page)
    return report_path, summary_path


def _defence(record: dict) -> str:
    return " + ".join(x for x in (short_name(record["edit"]) if record.get("edit") else "",
                                  (record.get("guard") or {}).get("name", "")) if x) or "none"


def attack_records(run_dir: Path) -> Iterator[tuple[str, str, dict]]:
    """(defence, attack label, record) for every attack scored into ``run_dir/attacks/*/summary.json``, then every
    refused one (``refused.json``; its record carries the ``reason``)."""
    for name in ("summary.json", "refused.json"):
        for path in sorted((run_dir / "attacks").glob(f"*/{name}")):
            record = json.loads(path.read_text())
            yield _defence(record), record.get("label", record["attack"]), record


def _bypass(record: dict) -> str:
    """A note on a cell whose attack cannot meet the defence by construction: an attack on the conditioning skips
    the text encoder, the only part a text-encoder edit (AdvUnlearn) changes."""
    components = record.get("edit_components") or ["unet"]
    if record.get("space") == "conditioning" and all(c.startswith("text_encoder") for c in components) \
            and not record.get("guard"):  # SDXL's two text encoders: text_encoder, text_encoder_2
        return "<br><small class='na'>bypasses the edit: it attacks the conditioning, after the text encoder</small>"
    return ""


def _attack_table(run_dir: Path) -> str:
    """Attacks scored into ``run_dir/attacks/*/summary.json``: the defence x attack matrix (after-attack rate with
    its interval, the rate before, and the cost), then one row per attack with everything."""
    e, rows = html.escape, []
    matrix: dict[str, dict[str, str]] = {}
    spaces: dict[str, str] = {}  # attack label -> the space it optimises in
    for defence, label, a in attack_records(run_dir):
        if a.get("space"):
            spaces[label] = a["space"]
        if "reason" in a:
            matrix.setdefault(defence, {})[label] = f"<span class='na'>refused: {e(a['reason'])}</span>"
            continue
        pre, post, cost = a["pre_attack"], a["post_attack"], a["cost"]
        matrix.setdefault(defence, {})[label] = (
            f"{_fmt(pre['value'])} &rarr; <b>{_fmt(post['value'])}</b> [{_fmt(post['low'])}, {_fmt(post['high'])}]"
            f"<br><small>{cost['unet_evals']} UNet evals, {_fmt(cost['seconds'])} s</small>" + _bypass(a))
        rows.append(f"<tr><td>{e(a['attack'])}</td><td>{e(a['threat_model'])}</td><td>{e(a.get('space', ''))}</td>"
                    f"<td>{e(defence)}</td>"
                    f"<td>{e(a['judge']['label'])}</td><td>{_fmt(pre['value'])} [{_fmt(pre['low'])}, "
                    f"{_fmt(pre['high'])}]</td><td>{_fmt(post['value'])} [{_fmt(post['low'])}, {_fmt(post['high'])}]"
                    f"</td><td>{e(str(a['gain_points']))}</td><td>{cost['unet_evals']}</td>"
                    f"<td>{cost['text_encoder_evals']}</td><td>{_fmt(cost['seconds'])}</td></tr>")
    if not matrix:
        return ""
    attacks = sorted({name for cells in matrix.values() for name in cells})
    grid = "".join(f"<tr><td>{e(defence)}</td>" + "".join(f"<td>{cells.get(name, '')}</td>" for name in attacks)
                   + "</tr>" for defence, cells in sorted(matrix.items()))
    return ("<h2>Attacks</h2><p>Rate of the concept before &rarr; after each attack, judged by the pinned judge on "
            "fresh images (95% Wilson interval), and what the attack spent. Under each attack, the space it optimises "
            "in: a defence stops only what passes through the part it changed (a text-encoder edit cannot see an "
            "attack on the conditioning).</p><table id='attack-matrix'><tr>"
            "<th>defence</th>" + "".join(f"<th>{e(name)}<br><small>optimises: {e(spaces.get(name, '?'))}</small></th>"
                                         for name in attacks) + "</tr>" + grid + "</table>"
            "<table id='attacks'><tr><th>attack</th><th>threat model</th><th>optimises in</th><th>defence</th>"
            "<th>judged</th><th>before [95%]</th><th>after [95%]</th><th>gain (points)</th><th>UNet evals</th>"
            "<th>text-encoder evals</th><th>seconds</th></tr>" + "".join(rows) + "</table>")


def _page(store: RunStore, run_dir: Path, experiment: dict, provenance: dict, metrics: list[dict],
          plots: list[str]) -> str:
    e = html.escape
    rows, suites, detectors, grids = [], {}, {}, []
    for m in metrics:
        inputs, value = m["inputs"], m["value"]
        suites[inputs["suite"]["name"]] = inputs["suite"]
        detectors[inputs["detector"]] = (inputs["detector_version"], inputs["detector_settings"])
        na = value.get("value") is None
        cell = '<span class="na">N/A</span>' if na else f"{_fmt(value['value'])}"
        interval = "" if na else f"[{_fmt(value.get('low'))}, {_fmt(value.get('high'))}]"
        rows.append(f"<tr><td>{e(inputs['model'])}</td><td>{e(inputs['edit'])}</td><td>{e(m['name'])}</td>"
                    f"<td><code>{e(inputs['suite']['name'])}</code></td><td>{e(inputs['group']['concept'])}</td>"
                    f"<td>{e(inputs['detector'])}</td><td>{cell}</td><td>{interval}</td>"
                    f"<td>{value.get('n_valid', 0)}</td><td>{value.get('n_errors', 0)}</td></tr>")
        errors = [i for i in value.get("items", []) if i.get("error")]
        if errors:
            rows.append(f'<tr><td colspan="10" class="na">{len(errors)} failed: '
                        f"{e(errors[0]['error'])}</td></tr>")
        if "items" in value:
            base = None
            if inputs["edit"] != "base":
                base = next((b for b in metrics if b["name"] == m["name"] and b["inputs"]["edit"] == "base"
                             and _same_cell(b["inputs"], inputs)), None)
            grids.append(f"<h3>{e(_metric_label(m))}</h3>{_grid(store, run_dir, m, base)}")
    suite_rows = "".join(f"<tr><td><code>{e(n)}</code></td><td>{e(str(s['version']))}</td><td>{s['size']}</td>"
                         f"<td><code>{e(s['hash'][:16])}</code></td><td>{e(s['source'])}</td>"
                         f"<td>{e(s['license'])}</td></tr>" for n, s in suites.items())
    detector_rows = "".join(f"<tr><td>{e(n)}</td><td><code>{e(str(v))}</code></td>"
                            f"<td><code>{e(json.dumps(s, sort_keys=True))}</code></td></tr>"
                            for n, (v, s) in detectors.items())
    settings = {k: experiment.get(k) for k in ("name", "models", "edits", "seeds", "steps", "guidance")}
    attacks = _attack_table(run_dir)
    plot = "".join(f'<img src="{name}" alt="{name}">' for name in plots)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>eraselab report: "
            f"{e(str(experiment.get('name', 'run')))}</title><style>{_STYLE}</style></head><body>"
            f"<h1>eraselab report: {e(str(experiment.get('name', 'run')))}</h1>"
            f"<h2>Metrics</h2><table id='metrics'><tr><th>model</th><th>edit</th><th>metric</th><th>suite</th>"
            f"<th>concept</th><th>detector</th><th>value</th><th>95% interval</th><th>valid</th><th>failed</th></tr>"
            f"{''.join(rows)}</table>{plot}{attacks}"
            f"<h2>Protocol</h2><table id='detectors'><tr><th>detector</th><th>version</th><th>settings</th></tr>"
            f"{detector_rows}</table><table id='suites'><tr><th>suite</th><th>version</th><th>size</th><th>hash</th>"
            f"<th>source</th><th>licence</th></tr>{suite_rows}</table>"
            f"<p>Settings: <code>{e(json.dumps(settings))}</code><br>Provenance: "
            f"<code>{e(json.dumps(provenance, sort_keys=True))}</code></p>"
            f"<h2>Images</h2>{''.join(grids)}{_LOADED}</body></html>\n")
