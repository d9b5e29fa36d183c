"""``eraselab demo``: the whole flow as far as it exists, on the built-in tiny model.

For now: load tiny, generate a grid (prompts x seeds), judge every image with the tiny classifier, and write
``report.html`` with the grid, the labels and the share of images that match their prompt.
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path

from eraselab import __version__
from eraselab.generate import GenerationRequest, generate_images
from eraselab.models import load_pipeline, pipeline_fingerprint
from eraselab.models.tiny.classifier import load_classifier
from eraselab.models.tiny.world import load_world
from eraselab.outputs import staged_directory, write_jsonl

_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse}
td,th{padding:4px 6px;text-align:center;font-size:12px}th{background:#eee}
img{width:96px;height:96px;image-rendering:pixelated;display:block;margin:auto}
.ok{color:#17702a}.miss{color:#b3261e;font-weight:600}code{background:#f4f4f4;padding:1px 4px}"""


def demo_prompts() -> list[tuple[str, dict[str, str]]]:
    """(prompt, expected attributes) pairs: each shape in a colour, one held-out paraphrase, the empty prompt."""
    world = load_world()
    pairs = [(world.prompt(s, s % len(world.colors)),
              {"shape": world.shapes[s], "color": world.colors[s % len(world.colors)]})
             for s in range(len(world.shapes))]
    star, blue = world.shapes.index("star"), world.colors.index("blue")
    pairs.append((world.prompt(star, blue, "heldout"), {"shape": "star", "color": "blue"}))
    pairs.append(("", {}))
    return pairs


def run_demo(out: Path, seed: int = 0, seeds_per_prompt: int = 6, steps: int = 25, guidance: float = 5.0,
             progress: bool = True) -> Path:
    """Write the demo into ``out``; returns the path of ``report.html``."""
    start = time.perf_counter()
    pipe, judge = load_pipeline("tiny"), load_classifier()
    pairs = demo_prompts()
    requests = [GenerationRequest(p, seed + j, steps, guidance) for p, _ in pairs for j in range(seeds_per_prompt)]
    images = generate_images(pipe, requests, progress=progress)
    labels = judge.labels(images)
    with staged_directory(out) as staging:
        (staging / "images").mkdir()
        records = []
        for i, (request, image, label) in enumerate(zip(requests, images, labels, strict=True)):
            name = f"images/{i:04d}.png"
            image.save(staging / name)
            records.append({**request.to_record(), "file": name, "labels": label})
        write_jsonl(staging / "requests.jsonl", records)
        meta = {"eraselab": __version__, "model": "tiny", "fingerprint": pipeline_fingerprint(pipe), "seed": seed,
                "steps": steps, "guidance": guidance, "seconds": round(time.perf_counter() - start, 1)}
        (staging / "summary.json").write_text(json.dumps(meta, indent=2) + "\n")
        (staging / "report.html").write_text(_html(pairs, records, seeds_per_prompt, meta))
    return out / "report.html"


def _html(pairs, records, per_prompt: int, meta: dict) -> str:
    e = html.escape
    rows = []
    for p, (prompt, expected) in enumerate(pairs):
        cells, hits = [], 0
        for record in records[p * per_prompt:(p + 1) * per_prompt]:
            label = record["labels"]
            ok = all(label[k] == v for k, v in expected.items())
            hits += ok
            css = "ok" if ok or not expected else "miss"
            text = f"{label['color']} {label['fill']} {label['shape']}"
            cells.append(f'<td><img src="{e(record["file"])}" alt="{e(text)}"><span class="{css}">{e(text)}</span>'
                         f'<br>seed {record["seed"]}</td>')
        score = f"{hits}/{per_prompt}" if expected else "n/a"
        rows.append(f"<tr><th><code>{e(prompt) or '(empty prompt)'}</code><br>match: {score}</th>{''.join(cells)}</tr>")
    settings = ", ".join(f"{e(k)}={e(str(v))}" for k, v in meta.items())
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>eraselab demo</title><style>{_STYLE}</style>"
            f"</head><body><h1>eraselab demo: the built-in tiny model</h1>"
            f"<p>Each row is a prompt, each column a seed; under each image, the tiny classifier's labels "
            f"(green: as the prompt asked). The held-out paraphrase was never in the UNet's training captions.</p>"
            f"<table>{''.join(rows)}</table><p><small>{settings}</small></p></body></html>\n")
