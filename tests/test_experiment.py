import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import yaml

from eraselab.errors import EraselabError
from eraselab.experiment import judge_run, run_experiment
from eraselab.experiment.config import DetectorConfig
from eraselab.experiment.parse import load_experiment
from eraselab.report import write_report
from eraselab.store import RunStore


def _experiment(tmp_path, micro_run, **overrides):
    config = {
        "name": "micro <b>star</b>",
        "models": [str(micro_run / "pipeline")],
        "seeds": {"start": 0, "count": 2},
        "sampler": {"steps": 2, "guidance": 5.0},
        "detectors": [{"name": "tiny", "classifier": str(micro_run / "classifier")}],
        "groups": [{"suite": "tiny:target:star", "metric": "efficacy", "concept": "shape=star"},
                   {"suite": "tiny:neighbour:star", "metric": "specificity"}],
        "batch_size": 8,
    } | overrides
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(("text", "message"), [
    ("groups: [\n  - {suite: a\n", "not valid YAML at line"),
    ("colour: red\ngroups: []\n", "field 'colour': is not an experiment field"),
    ("groups:\n  - {suite: 'tiny:target:star', metric: accuracy}\n", "field 'groups[0].metric'"),
    ("seeds: {count: 0}\ngroups:\n  - {suite: 'tiny:target:star', metric: efficacy}\n", "field 'seeds'"),
    ("sampler: {steps: two}\ngroups:\n  - {suite: 'tiny:target:star', metric: efficacy}\n", "sampler.steps"),
    ("batch_size: 0\ngroups:\n  - {suite: 'tiny:target:star', metric: efficacy}\n", "field 'batch_size'"),
    ("fixed_batch_shape: maybe\ngroups:\n  - {suite: 'tiny:target:star', metric: efficacy}\n",
     "field 'fixed_batch_shape': must be true, false or null"),
    ("edits: [base, [base, /e]]\ngroups:\n  - {suite: 'tiny:target:star', metric: efficacy}\n",
     "field 'edits[1]': must be 'base', an edit directory, or a list of edit directories to stack"),
])
def test_bad_experiment_files_name_the_field(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(EraselabError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_experiment(path)


def test_guards_that_differ_are_different_variants_never_one_silently(tmp_path, micro_run):
    from eraselab.experiment.plan import variants

    phrases = load_experiment(_experiment(tmp_path, micro_run, guards=[
        {"name": "safree", "concepts": ["star"]}, {"name": "safree", "concepts": ["star", "pentagram"]}]))
    assert list(variants(phrases))[1:] == ["base+safree(star)", "base+safree(star, pentagram)"]
    with pytest.raises(EraselabError, match=r"guards\[1\]': has the same label 'safree\(star\)' as guards\[0\]"):
        load_experiment(_experiment(tmp_path, micro_run, guards=[
            {"name": "safree", "concepts": ["star"]}, {"name": "safree", "concepts": ["star"], "alpha": 0.02}]))


def test_run_judge_and_report(tmp_path, micro_run):
    experiment = load_experiment(_experiment(tmp_path, micro_run))
    dry = run_experiment(experiment, tmp_path / "run", dry_run=True, progress=False)
    assert dry["grid_images"] == (6 + 30) * 2
    summary = run_experiment(experiment, tmp_path / "run", progress=False)
    assert summary["counts"]["images"] == 72 and summary["metrics"] == 2
    again = run_experiment(experiment, tmp_path / "run", progress=False)  # a finished run is a no-op
    assert again["counts"] == summary["counts"]
    metrics = {m["name"]: m["value"] for m in RunStore(tmp_path / "run").metrics()}
    assert metrics["efficacy"]["n_valid"] == 12 and 0 <= metrics["efficacy"]["value"] <= 1
    assert len(metrics["specificity"]["items"]) == 60

    # Lose one image (as a run killed before making it would), then re-judge with a detector that was never run:
    # the cells without an image are errors, not "absent". (Corrupt images: tests/test_faults.py.)
    store = RunStore(tmp_path / "run")
    lost = store.discard_image(store.images()[0][1])
    other = tmp_path / "classifier-copy"
    shutil.copytree(micro_run / "classifier", other)
    judge_run(tmp_path / "run", (DetectorConfig("tiny", {"classifier": str(other)}),), progress=False)
    errors = [i for m in RunStore(tmp_path / "run").metrics() for i in m["value"]["items"] if i["error"]]
    assert lost and errors and all(i["flag"] is None and "never generated" in i["error"] for i in errors)

    page, summary_path = write_report(tmp_path / "run")
    text = page.read_text()
    assert "micro &lt;b&gt;star&lt;/b&gt;" in text and "<b>star</b>" not in text
    assert "95% interval" in text and "failed" in text
    data = json.loads(summary_path.read_text())
    assert data["provenance"]["eraselab"] and data["metrics"][0]["inputs"]["suite"]["hash"]


def test_a_changed_suite_is_refused(tmp_path, micro_run):
    suite = tmp_path / "prompts.csv"
    suite.write_text("prompt,categories\na red star,shape=star\n")
    path = _experiment(tmp_path, micro_run, groups=[{"suite": str(suite), "metric": "presence",
                                                     "concept": "shape=star"}])
    run_experiment(load_experiment(path), tmp_path / "run", progress=False)
    suite.write_text("prompt,categories\na blue star,shape=star\n")
    with pytest.raises(EraselabError, match="changed since this run started"):
        run_experiment(load_experiment(path), tmp_path / "run", progress=False)


def _table(run_dir):
    db = sqlite3.connect(run_dir / "store.sqlite")
    rows = {
        "requests": sorted(db.execute("SELECT key, spec FROM requests")),
        "images": sorted(db.execute("SELECT request_key, image_hash FROM images")),
        "detections": sorted(db.execute("SELECT image_hash, detector, version, settings_hash, result, error "
                                        "FROM detections")),
        "metrics": sorted(db.execute("SELECT key, name, inputs, value FROM metrics")),
    }
    db.close()
    return rows


def test_a_run_killed_with_sigkill_resumes_to_the_uninterrupted_result(tmp_path, micro_run):
    path = _experiment(tmp_path, micro_run, seeds={"start": 0, "count": 12}, batch_size=4)
    command = [sys.executable, "-m", "eraselab", "run", str(path), "--out"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([*command, str(tmp_path / "clean"), "--json"], check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    process = subprocess.Popen([*command, str(killed), "--json"], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline, seen = time.monotonic() + 300, 0
    while time.monotonic() < deadline and process.poll() is None:
        try:
            db = sqlite3.connect(killed / "store.sqlite", timeout=1)
            seen = db.execute("SELECT COUNT(*) FROM images").fetchone()[0]
            db.close()
        except sqlite3.Error:
            seen = 0
        if seen >= 40:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the run finished before it could be killed; enlarge the grid"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert 0 < seen < 36 * 12
    subprocess.run([*command, str(killed), "--json"], check=True, env=env, capture_output=True)

    clean, resumed = _table(tmp_path / "clean"), _table(killed)
    for table in ("requests", "images", "detections"):
        assert [r[:2] if table != "detections" else r for r in clean[table]] == \
               [r[:2] if table != "detections" else r for r in resumed[table]], table
    assert [(k, n, v) for k, n, _, v in clean["metrics"]] == [(k, n, v) for k, n, _, v in resumed["metrics"]]
    assert len(clean["images"]) == 36 * 12


def test_an_empty_prompt_group_is_na_not_zero(tmp_path, micro_run):
    empty = tmp_path / "empty.csv"
    empty.write_text("prompt,categories\n")
    path = _experiment(tmp_path, micro_run, groups=[{"suite": str(empty), "metric": "presence",
                                                     "concept": "shape=star"}])
    run_experiment(load_experiment(path), tmp_path / "run", progress=False)
    [metric] = RunStore(tmp_path / "run").metrics()
    assert metric["value"]["value"] is None and metric["value"]["n_valid"] == 0
    page, _ = write_report(tmp_path / "run")
    assert '<span class="na">N/A</span>' in page.read_text()


def test_edits_are_a_grid_axis_with_paired_change_against_base(tmp_path, micro_run):
    from eraselab.erase.artifact import Edit
    from eraselab.models import cross_attention_layers, load_pipeline, pipeline_fingerprint

    pipe = load_pipeline(micro_run / "pipeline")
    tensors = {f"unet.{layer.name}.to_v.weight": layer.to_v.weight.detach() * 0
               for layer in cross_attention_layers(pipe.unet)}
    Edit(tensors, {"method": "test", "base_fingerprint": pipeline_fingerprint(pipe)}).save(tmp_path / "mute")
    path = _experiment(tmp_path, micro_run, edits=["base", str(tmp_path / "mute")], seeds={"start": 0, "count": 4},
                       groups=[{"suite": "tiny:target:star", "metric": "efficacy", "concept": "shape=star"}])
    summary = run_experiment(load_experiment(path), tmp_path / "run", progress=False)
    assert summary["counts"]["images"] == 2 * 6 * 4
    metrics = RunStore(tmp_path / "run").metrics()
    change = [m for m in metrics if m["name"] == "presence_change"]
    assert len(change) == 1 and change[0]["inputs"]["edit"] == str(tmp_path / "mute")
    by_edit = {m["inputs"]["edit"]: m for m in metrics if m["name"] == "efficacy"}
    base = [i["flag"] for i in by_edit["base"]["value"]["items"]]
    edited = [i["flag"] for i in by_edit[str(tmp_path / "mute")]["value"]["items"]]
    assert change[0]["value"]["per_item"] == [float(e) - float(b) for b, e in zip(base, edited, strict=True)]
    assert pipeline_fingerprint(load_pipeline(micro_run / "pipeline")) == pipeline_fingerprint(pipe)
    names = {m["name"] for m in metrics}
    assert {"feature_distance", "kid"} <= names  # locality in the tiny classifier's feature space
    distance = next(m for m in metrics if m["name"] == "feature_distance")["value"]
    assert len(distance["per_item"]) == 24 and distance["value"] >= 0
    write_report(tmp_path / "run")


def test_clip_score_groups_use_the_clip_detector_model(tmp_path, micro_run):
    import torch

    from eraselab.judge.detectors.clip import ClipEmbedder

    clip = {"name": "clip", "model": str(micro_run / "clip"), "concepts": ["a star", "a circle"]}
    path = _experiment(tmp_path, micro_run, detectors=[clip],
                       groups=[{"suite": "tiny:target:star", "metric": "clip_score"}])
    run_experiment(load_experiment(path), tmp_path / "run", progress=False)
    [metric] = RunStore(tmp_path / "run").metrics()
    assert metric["name"] == "clip_score" and metric["value"]["n_valid"] == 12
    store, embedder = RunStore(tmp_path / "run"), ClipEmbedder(micro_run / "clip")
    first = metric["value"]["items"][0]
    image, text = embedder.images([store.load_image(first["image"])])[0], embedder.text([first["prompt"]])[0]
    assert metric["value"]["per_item"][0] == pytest.approx(100 * max(float(torch.dot(image, text)), 0), abs=1e-4)
    bad = _experiment(tmp_path, micro_run, groups=[{"suite": "tiny:target:star", "metric": "clip_score"}])
    with pytest.raises(EraselabError, match="clip_score needs a clip detector"):
        load_experiment(bad)


def test_several_models_in_one_grid(tmp_path, micro_run):
    shutil.copytree(micro_run / "pipeline", tmp_path / "second")
    path = _experiment(tmp_path, micro_run, models=[str(micro_run / "pipeline"), str(tmp_path / "second")],
                       groups=[{"suite": "tiny:target:star", "metric": "efficacy", "concept": "shape=star"}])
    summary = run_experiment(load_experiment(path), tmp_path / "run", progress=False)
    assert summary["counts"]["images"] == 2 * 6 * 2 and summary["metrics"] == 2
    models = {m["inputs"]["model"] for m in RunStore(tmp_path / "run").metrics()}
    assert models == {str(micro_run / "pipeline"), str(tmp_path / "second")}


def test_attacks_are_a_grid_axis_with_refusals_resume_and_a_defence_by_attack_table(tmp_path):
    from eraselab.erase.spec import EraseSpec
    from eraselab.erase.uce import UceConfig
    from eraselab.erase.uce import erase as uce
    from eraselab.models import load_pipeline
    from eraselab.models.tiny.world import load_world
    from eraselab.profile import TINY

    spec = EraseSpec(("star",), ("shape",), templates=load_world().erase_templates("star"))
    edit = uce(load_pipeline("tiny"), spec, TINY.config(UceConfig)).save(tmp_path / "uce-star")
    prompts = tmp_path / "stars.csv"
    prompts.write_text("prompt\na red star\na blue star\n")
    config = {"name": "attacked", "models": ["tiny"], "edits": ["base", str(edit)], "seeds": [0],
              "guards": [{"name": "negative-prompt", "concept": "star"}],
              "groups": [{"suite": "tiny:target:star", "metric": "efficacy", "concept": "shape=star"}],
              "attacks": [{"name": "embedding-recovery", "concept": "star", "suite": str(prompts), "seeds": 1},
                          {"name": "concept-vector", "concept": "star", "suite": str(prompts), "seeds": 1,
                           "options": {"strength": 5.0}}]}
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump({**config, "attacks": [{**config["attacks"][1], "options": {"eta": 5.0}}]}))
    with pytest.raises(EraselabError, match=r"attacks\[0\]\.options': the concept-vector attack has no option 'eta'"):
        load_experiment(path)
    path.write_text(yaml.safe_dump(config))
    experiment = load_experiment(path)
    assert run_experiment(experiment, tmp_path / "run", dry_run=True)["attack_cells"] == 4 * 2
    summary = run_experiment(experiment, tmp_path / "run", progress=False)
    # embedding recovery needs an edit's weights: refused on base and on base + guard, run on the two UCE variants
    assert summary["attacks"] == {"run": 6, "resumed": 0, "refused": 2}
    refused = [json.loads(p.read_text()) for p in (tmp_path / "run" / "attacks").glob("*/refused.json")]
    assert {r["attack"] for r in refused} == {"embedding-recovery"} and all(r["edit"] is None for r in refused)
    assert all("needs white-box access" in r["reason"] for r in refused)
    recovered = [json.loads(p.read_text()) for p in (tmp_path / "run" / "attacks").glob("*/summary.json")
                 if "embedding-recovery" in p.parent.name]
    assert {r["guard"]["name"] if r["guard"] else None for r in recovered} == {None, "negative-prompt"}
    assert all(r["post_attack"]["value"] >= r["pre_attack"]["value"] for r in recovered)
    again = run_experiment(experiment, tmp_path / "run", progress=False)
    assert again["attacks"] == {"run": 0, "resumed": 8, "refused": 0}
    page, _ = write_report(tmp_path / "run")
    text = page.read_text()
    assert "id='attack-matrix'" in text and "refused: embedding-recovery needs white-box access" in text
    assert text.count("<td>uce-star") >= 2 and "UNet evals" in text
    assert "optimises: conditioning" in text and "optimises: typed-text" not in text  # under each attack's name
    assert {r["space"] for r in recovered} == {"conditioning"}


def test_the_example_in_the_experiment_docs_is_a_valid_experiment(tmp_path):
    import eraselab.experiment.config as experiment_config

    block = experiment_config.__doc__.split("::\n\n", 1)[1]
    path = tmp_path / "example.yaml"
    path.write_text("\n".join(line[4:] for line in block.splitlines() if line.startswith("    ")))
    experiment = load_experiment(path)
    assert [a.name for a in experiment.attacks] == ["embedding-recovery", "concept-vector"]
    assert experiment.attacks[1].options == {"strength": 5.0} and experiment.guards[0].name == "sld"


def test_an_experiment_reads_back_from_its_yaml_form(tmp_path):
    import dataclasses

    from eraselab.experiment.config import Experiment
    from eraselab.experiment.parse import parse_experiment

    raw = {"version": 1, "name": "every field", "models": ["tiny", "/m"], "edits": ["base", "/e", ["/e", "/f"]],
           "seeds": [3, 5],
           "sampler": {"steps": 7, "guidance": 3.5, "height": 64, "width": 96}, "device": "cuda:1",
           "dtype": "bfloat16", "detectors": [{"name": "tiny", "classifier": "/c"}, "nudenet"],
           "groups": [{"suite": "tiny:target:star", "metric": "efficacy", "concept": "shape=star",
                       "detector": "nudenet"}],
           "use_suite_seeds": True, "batch_size": 3, "fixed_batch_shape": False,
           "guards": [{"name": "safree", "concepts": ["star", "pentagram"]}],
           "attacks": [{"name": "p4d", "concept": "star", "suite": "tiny:target:star", "seeds": 2,
                        "options": {"oracle_seeds": [7, 8]}}]}
    experiment = parse_experiment(raw)
    defaults = parse_experiment({"groups": [{"suite": "tiny:target:star", "metric": "efficacy"}]})
    same = [f.name for f in dataclasses.fields(Experiment) if getattr(experiment, f.name) == getattr(defaults, f.name)]
    assert same == ["version"]  # every other field is set here: a new field must join this test and to_dict
    assert parse_experiment(experiment.to_dict()) == experiment
    path = tmp_path / "again.yaml"
    path.write_text(yaml.safe_dump(experiment.to_dict()))
    assert load_experiment(path) == experiment
