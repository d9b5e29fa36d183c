"""Fault injection: wrong, missing, hostile or foreign inputs to every verb. Each must give one clear line on stderr,
exit code 2, no traceback, nothing half-written, and no number the inputs do not support.

(The trap key's faults are in tests/test_traps.py beside its fixtures; KID's in tests/test_metrics.py.)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from eraselab.cli import app
from eraselab.errors import EraselabError
from eraselab.outputs import staged_output
from eraselab.store import RunStore

runner = CliRunner()


def _refused(args: list[str], message: str, untouched: Path | None = None) -> None:
    """``eraselab ARGS`` exits 2 with one line naming ``message``, no traceback, and leaves ``untouched`` absent."""
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("eraselab: error:"), result.stderr
    assert message in lines[0], lines[0]
    assert "Traceback" not in result.output
    if untouched is not None:
        assert not untouched.exists(), f"{untouched} was written"


def _experiment(path: Path, **fields) -> Path:
    config = {"name": "faults", "models": ["tiny"], "edits": ["base"], "seeds": {"count": 1},
              "sampler": {"steps": 2, "guidance": 5.0}, "detectors": ["tiny"],
              "groups": [{"suite": "tiny:target:star", "metric": "efficacy", "concept": "shape=star"}]} | fields
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def uce_edit(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("edits") / "uce-star"
    result = runner.invoke(app, ["erase", "--method", "uce", "--concept", "star", "--anchor", "shape",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


# -- 1. an unknown class is refused, never counted as absent ------------------------------------------------------
@pytest.mark.parametrize("dry_run", [False, True])
def test_an_unknown_class_value_is_refused_before_any_image(tmp_path, dry_run):
    path = _experiment(tmp_path / "e.yaml", groups=[{"suite": "tiny:target:star", "metric": "efficacy",
                                                     "concept": "shape=strar"}])
    _refused(["run", str(path), "--out", str(tmp_path / "run"), *(["--dry-run"] if dry_run else [])],
             "'strar' is not a tiny-world shape (the classifier knows: circle", tmp_path / "run")


@pytest.mark.parametrize(("groups", "message"), [
    ([{"suite": "tiny:target:star", "metric": "efficacy", "concept": "shap=star"}], "no 'shap' head"),
    ([{"suite": "tiny:target:star", "metric": "efficacy", "concept": "stra"}], "'stra' is not a tiny-world class"),
])
def test_an_unknown_head_or_bare_class_is_refused(tmp_path, groups, message):
    path = _experiment(tmp_path / "e.yaml", groups=groups)
    _refused(["run", str(path), "--out", str(tmp_path / "run"), "--dry-run"], message, tmp_path / "run")


def test_expected_attributes_the_detector_cannot_judge_are_refused(tmp_path):
    suite = tmp_path / "suite.jsonl"
    suite.write_text(json.dumps({"prompt": "a red star", "categories": ["shape=star", "colour=red"]}) + "\n")
    path = _experiment(tmp_path / "e.yaml", groups=[{"suite": str(suite), "metric": "specificity"}])
    _refused(["run", str(path), "--out", str(tmp_path / "run")], "no 'colour' head", tmp_path / "run")


# -- 3. an edit whose manifest was changed by hand -----------------------------------------------------------------
@pytest.mark.parametrize("change", ["relabel", "strip-fingerprint"])
def test_a_relabelled_or_stripped_manifest_is_refused_by_every_verb(tmp_path, uce_edit, change):
    edit = tmp_path / "edit"
    shutil.copytree(uce_edit, edit)
    manifest = json.loads((edit / "manifest.json").read_text())
    if change == "relabel":
        manifest["method"] = "esd"
    else:
        del manifest["base_fingerprint"]
    (edit / "manifest.json").write_text(json.dumps(manifest, indent=2))
    _refused(["generate", "--edit", str(edit), "--prompt", "a red star", "--steps", "2", "--out",
              str(tmp_path / "gen")], "seal does not match", tmp_path / "gen")
    _refused(["run", str(_experiment(tmp_path / "e.yaml", edits=["base", str(edit)])), "--out",
              str(tmp_path / "run")], "seal does not match", tmp_path / "run")
    _refused(["attack", "--attack", "concept-vector", "--edit", str(edit), "--concept", "star", "--suite",
              "tiny:target:star", "--out", str(tmp_path / "attack")], "seal does not match", tmp_path / "attack")


def test_an_edit_for_another_model_is_refused_before_any_image(tmp_path, uce_edit, micro_run):
    path = _experiment(tmp_path / "e.yaml", models=[str(micro_run / "pipeline")], edits=["base", str(uce_edit)],
                       detectors=[{"name": "tiny", "classifier": str(micro_run / "classifier")}])
    _refused(["run", str(path), "--out", str(tmp_path / "run")], "was made for base model", tmp_path / "run")


# -- 4. a corrupt image is never reused --------------------------------------------------------------------------
def test_a_corrupt_image_is_reported_by_verify_judge_and_report_and_made_again_by_run(tmp_path, micro_run):
    path = _experiment(tmp_path / "e.yaml", models=[str(micro_run / "pipeline")], seeds={"count": 2},
                       detectors=[{"name": "tiny", "classifier": str(micro_run / "classifier")}])
    run = tmp_path / "run"
    assert runner.invoke(app, ["run", str(path), "--out", str(run), "--json"]).exit_code == 0
    store = RunStore(run)
    before_metrics = {m["name"]: m["value"]["value"] for m in store.metrics()}
    victim = store.images()[0][1]
    good = store.image_path(victim).read_bytes()
    damaged = bytearray(good)
    damaged[60:80] = bytes(20)  # 20 zeroed bytes, as the report of the defect did
    store.image_path(victim).write_bytes(bytes(damaged))
    store.close()
    _refused(["verify", str(run)], f"{victim[:12]} (corrupt)")
    _refused(["judge", str(run), "--detector", "tiny", "--option", f"classifier={micro_run / 'classifier'}"],
             "missing or corrupt")
    _refused(["report", str(run)], "missing or corrupt")
    result = runner.invoke(app, ["run", str(path), "--out", str(run), "--json"])
    assert result.exit_code == 0, result.output
    store = RunStore(run)
    assert store.image_path(victim).read_bytes() == good  # made again, bit for bit: generation is deterministic
    assert {m["name"]: m["value"]["value"] for m in store.metrics()} == before_metrics
    assert runner.invoke(app, ["verify", str(run)]).exit_code == 0


# -- 5. late validation: every name, path, option and concept before the first image ------------------------------
@pytest.mark.parametrize(("fields", "message"), [
    ({"detectors": ["tinny"]}, "unknown detector 'tinny'; did you mean 'tiny'?"),
    ({"detectors": [{"name": "tiny", "clasifier": "x"}]},
     "the tiny detector has no option 'clasifier'; did you mean 'classifier'?"),
    ({"edits": ["base", "/no/such/edit"]}, "/no/such/edit is not an edit"),
    ({"groups": [{"suite": "tiny:target:stra", "metric": "efficacy"}]}, "'stra' is not a tiny-world concept"),
    ({"groups": [{"suite": "no-such-suite.csv", "metric": "efficacy", "concept": "shape=star"}]}, "no-such-suite"),
    ({"models": ["/no/such/model"]}, "does not exist"),
    ({"dtype": "half"}, "field 'dtype': must be one of"),
    ({"sampler": {"steps": 2, "height": 20}}, "height must be a positive multiple of 8"),
    ({"guards": [{"name": "negative-prompt", "concept": "zebra"}]}, "vocabulary: zebra"),
    ({"attacks": [{"name": "concept-vector", "concept": "zebra", "suite": "tiny:target:star"}]},
     "'zebra' is not a tiny-world concept"),
])
@pytest.mark.parametrize("dry_run", [False, True])
def test_every_bad_name_path_option_and_concept_is_refused_before_the_first_image(tmp_path, fields, message, dry_run):
    path = _experiment(tmp_path / "e.yaml", **fields)
    _refused(["run", str(path), "--out", str(tmp_path / "run"), *(["--dry-run"] if dry_run else [])], message,
             tmp_path / "run")


# -- 6. a dry or failed run does not lock its directory -----------------------------------------------------------
def test_a_dry_run_writes_nothing_and_a_directory_without_results_takes_the_corrected_experiment(tmp_path):
    run = tmp_path / "run"
    result = runner.invoke(app, ["run", str(_experiment(tmp_path / "a.yaml")), "--out", str(run), "--dry-run"])
    assert result.exit_code == 0 and not run.exists()
    store = RunStore(run)  # a run that bound another experiment, then failed before its first result
    store.set_meta_once("experiment", json.dumps({"name": "a typo"}))
    store.set_meta_once("suite:tiny:target:strr", "0" * 64)
    store.close()
    result = runner.invoke(app, ["run", str(_experiment(tmp_path / "b.yaml")), "--out", str(run), "--json"])
    assert result.exit_code == 0, result.output
    assert RunStore(run).meta("suite:tiny:target:strr") is None
    _refused(["run", str(_experiment(tmp_path / "c.yaml", seeds={"count": 2})), "--out", str(run)],
             "holds another experiment's results")


# -- 7. nothing half-written ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("args", "message"), [
    (["generate", "--prompt", "a zebra", "--steps", "2"], "vocabulary: zebra"),
    (["erase", "--method", "uce", "--concept", "zebra"], "zebra"),
    (["erase", "--method", "uce", "--concept", "star", "--anchor", "star"], "the concept itself"),
    (["attack", "--attack", "concept-vector", "--concept", "star", "--suite", "tiny:target:star", "--label",
      "shape=strar"], "'strar' is not a tiny-world shape"),
])
def test_a_failed_verb_leaves_no_output_directory_not_even_its_parents(tmp_path, args, message):
    out = tmp_path / "new" / "out"
    _refused([*args, "--out", str(out)], message, tmp_path / "new")


def test_a_staged_output_that_fails_midway_leaves_nothing_and_one_that_succeeds_appears_whole(tmp_path):
    out = tmp_path / "a" / "b" / "out"
    with pytest.raises(RuntimeError), staged_output(out) as staging:
        (staging / "half.png").write_bytes(b"x")
        raise RuntimeError("stopped")
    assert not (tmp_path / "a").exists()
    with staged_output(out) as staging:
        (staging / "whole.png").write_bytes(b"x")
    assert [p.name for p in out.iterdir()] == ["whole.png"] and not list(out.parent.glob(".*incomplete*"))


# -- every verb's other wrong inputs -------------------------------------------------------------------------------
@pytest.mark.parametrize(("args", "message"), [
    (["verify", "{tmp}"], "is not a run directory"),
    (["report", "{tmp}"], "is not a run directory"),
    (["judge", "{tmp}", "--detector", "tiny"], "is not a run directory"),
    (["generate", "--prompt", "a star", "--batch-size", "0", "--out", "{tmp}/gen"], "batch size must be"),
    (["generate", "--prompt", "a star", "--edit", "{tmp}", "--out", "{tmp}/gen"], "is not an edit"),
    (["erase", "--concept", "star", "--config", "{tmp}/cfg.yaml", "--out", "{tmp}/e"], "expected float or null"),
    (["erase", "--concept", "star", "--method", "ucee", "--out", "{tmp}/e"], "did you mean 'uce'"),
    (["generate", "--prompt", "a star", "--out", "{tmp}/file.txt"], "it is a file"),
    (["generate", "--prompt", "a star", "--dtype", "half", "--out", "{tmp}/g"], "dtype must be one of"),
    (["generate", "--prompt", "a star", "--height", "20", "--out", "{tmp}/g"], "height must be a positive multiple"),
    (["generate", "--prompt", "a star", "--device", "cuda:7", "--out", "{tmp}/g"], "cannot move the model"),
    (["generate", "--prompt", "a star", "--model", "{tmp}/sd3", "--out", "{tmp}/g"], "a StableDiffusion3Pipeline"),
    (["generate", "--prompt", "a star", "--model", "{tmp}/broken", "--out", "{tmp}/g"], "could not load the pipeline"),
    (["erase", "--concept", "star", "--config", "{tmp}/broken.yaml", "--out", "{tmp}/e"], "is not valid YAML at line"),
    (["erase", "--concept", "star", "--method", "trce", "--model", "{tmp}/broken", "--out", "{tmp}/e"],
     "TRCE (lambda = 0) needs a caption corpus"),  # said before the (unloadable) model is tried
    (["verify", "{tmp}/garbage"], "is not a readable run store"),
    (["report", "{tmp}/garbage"], "is not a readable run store"),
    (["run", "{tmp}/e.yaml", "--out", "{tmp}/garbage"], "is not a readable run store"),
])
def test_other_bad_inputs(tmp_path, args, message):
    (tmp_path / "cfg.yaml").write_text("preserve_scale: lots\n")
    (tmp_path / "broken.yaml").write_text("lamb: [\n")
    (tmp_path / "file.txt").write_text("")
    (tmp_path / "garbage").mkdir()
    for name, index in (("sd3", {"_class_name": "StableDiffusion3Pipeline"}), ("broken", {"unet": ["x", "y"]})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model_index.json").write_text(json.dumps(index))
    (tmp_path / "garbage" / "store.sqlite").write_bytes(b"not a database, " * 64)
    _experiment(tmp_path / "e.yaml")
    _refused([a.replace("{tmp}", str(tmp_path)) for a in args], message)


def test_judge_refuses_a_detector_typo_and_an_unknown_option_before_judging(tmp_path, micro_run):
    path = _experiment(tmp_path / "e.yaml", models=[str(micro_run / "pipeline")],
                       detectors=[{"name": "tiny", "classifier": str(micro_run / "classifier")}])
    run = tmp_path / "run"
    assert runner.invoke(app, ["run", str(path), "--out", str(run)]).exit_code == 0
    counts = RunStore(run).counts()
    _refused(["judge", str(run), "--detector", "tinny"], "did you mean 'tiny'")
    _refused(["judge", str(run), "--detector", "tiny", "--option", "clasifier=x"], "tiny detector has no option")
    assert RunStore(run).counts() == counts


def test_a_method_config_takes_a_number_where_the_default_is_null(tmp_path):
    from eraselab.cli import _method_config
    from eraselab.erase.registry import ERASERS
    from eraselab.erase.uce import UceConfig

    (tmp_path / "cfg.yaml").write_text("preserve_scale: 0.5\nlamb: 1\n")
    settings = _method_config(ERASERS, "uce", tmp_path / "cfg.yaml", "sd")
    assert settings == UceConfig(preserve_scale=0.5, lamb=1.0)
    (tmp_path / "cfg.yaml").write_text("edit_keys: 1\n")
    with pytest.raises(EraselabError, match="expected bool"):
        _method_config(ERASERS, "uce", tmp_path / "cfg.yaml", "sd")
