import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from eraselab.cli import app
from eraselab.errors import EraselabError

runner = CliRunner()


@pytest.mark.parametrize("verb", [["generate"], ["demo"], ["erase"], ["run"], ["tiny", "train"], ["tiny", "check"],
                                  ["tiny", "path"], ["verify"], ["judge"], ["report"], ["attack"], ["audit"],
                                  ["leaderboard"], ["safegen-data"]])
def test_every_verb_has_help_with_an_example(verb):
    result = runner.invoke(app, [*verb, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output


def test_tiny_path_prints_the_pipeline_directory():
    result = runner.invoke(app, ["tiny", "path"])
    assert result.exit_code == 0
    assert result.stdout.strip().endswith("pipeline")


def test_generate_writes_images_and_requests(tmp_path):
    out = tmp_path / "gen"
    result = runner.invoke(app, ["generate", "--prompt", "a red star", "--prompt", "a blue heart", "--num-images", "2",
                                 "--seed", "7", "--steps", "2", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["images"] == 4
    records = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    assert [(r["prompt"], r["seed"]) for r in records] == [("a red star", 7), ("a red star", 8), ("a blue heart", 7),
                                                           ("a blue heart", 8)]
    assert all((out / r["file"]).is_file() for r in records)
    assert records[0]["batching"] == {"size": 8, "fixed_shape": True}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging or probe files left


def test_prompts_file(tmp_path):
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("prompt,extra\na green cross,1\nan orange square,2\n")
    out = tmp_path / "gen"
    result = runner.invoke(app, ["generate", "--prompts-file", str(prompts), "--num-images", "1", "--steps", "2",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert len(list(out.glob("*.png"))) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prompt", "a red star", "--num-images", "0"], "--num-images must be at least 1"),
        (["--prompt", "a zebra on a unicorn"], "vocabulary: unicorn, zebra"),
        (["--prompt", "a red star", "--model", "/no/such/model"], "does not exist"),
        (["--prompt", "a red star", "--model", "some-org/some-model"], "pass a local diffusers directory"),
        ([], "at least one --prompt"),
        (["--prompt", "a red star", "--batch-size", "0"], "batch size must be an integer >= 1"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, args, message):
    out = tmp_path / "gen"
    result = runner.invoke(app, ["generate", *args, "--steps", "2", "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("eraselab: error:") and message in lines[0], result.stderr
    assert "Traceback" not in result.output
    assert not out.exists() or not any(out.iterdir())


def test_unwritable_output_directory(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = runner.invoke(app, ["generate", "--prompt", "a red star", "--out", str(blocker / "sub")])
    assert result.exit_code == 2
    assert "cannot write to output directory" in result.stderr


def test_real_process_exit_code_and_stderr(tmp_path):
    # as a user runs it: without the test session's quiet settings (conftest), the libraries' import-time chatter
    # (transformers' "requires torchvision ... falling back") must not reach stderr either
    env = {k: v for k, v in os.environ.items() if not k.endswith("_VERBOSITY")}
    proc = subprocess.run([sys.executable, "-m", "eraselab", "generate", "--prompt", "a red star", "--num-images", "0",
                           "--out", str(tmp_path / "x")], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["eraselab: error: --num-images must be at least 1, got 0"]


def test_generate_with_an_edit_changes_the_images(tmp_path):
    import numpy as np
    from PIL import Image

    from eraselab.erase.artifact import Edit
    from eraselab.models import cross_attention_layers, load_pipeline, pipeline_fingerprint

    pipe = load_pipeline("tiny")
    layer = cross_attention_layers(pipe.unet)[0]
    Edit({f"unet.{layer.name}.to_v.weight": layer.to_v.weight.detach() * 0},
         {"method": "test", "base_fingerprint": pipeline_fingerprint(pipe)}).save(tmp_path / "edit")
    args = ["generate", "--prompt", "a red star", "--num-images", "1", "--steps", "3"]
    assert runner.invoke(app, [*args, "--out", str(tmp_path / "base")]).exit_code == 0
    result = runner.invoke(app, [*args, "--edit", str(tmp_path / "edit"), "--out", str(tmp_path / "edited")])
    assert result.exit_code == 0, result.output
    base = np.asarray(Image.open(tmp_path / "base" / "00000.png"))
    edited = np.asarray(Image.open(tmp_path / "edited" / "00000.png"))
    assert not np.array_equal(base, edited)
    missing = runner.invoke(app, [*args, "--edit", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")])
    assert missing.exit_code == 2 and "is not an edit" in missing.stderr


@pytest.mark.parametrize("method", ["uce", "rece", "trce"])
def test_erase_writes_an_edit_with_the_tiny_defaults(tmp_path, method):
    options = []
    if method == "trce":  # both stages, with stage 2 shortened (one epoch over one trajectory per pair)
        (tmp_path / "trce.yaml").write_text("epochs: 1\ntrajectories_per_pair: 1\n")
        options = ["--config", str(tmp_path / "trce.yaml")]
    result = runner.invoke(app, ["erase", "--method", method, "--concept", "star", "--anchor", "shape", *options,
                                 "--out", str(tmp_path / "edit")])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "edit" / "manifest.json").read_text())
    assert manifest["method"] == method and manifest["config"]["corpus"] == "tiny"
    if method == "trce":
        assert manifest["stage"] == "1,2" and any(".attn1." in t for t in manifest["tensors"])


def test_erase_with_esd_resumes_from_its_checkpoint_and_cleans_it_up(tmp_path):
    config = tmp_path / "esd.yaml"
    config.write_text("iterations: 2\nddim_steps: 3\nbatch_size: 1\nvariant: esd-x-strict\n")
    out = tmp_path / "esd"
    result = runner.invoke(app, ["erase", "--method", "esd", "--concept", "star", "--config", str(config),
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["iterations"] == 2 and all(".attn2.to_" in t for t in manifest["tensors"])
    assert not (tmp_path / "esd.checkpoint").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "uec"], "did you mean 'uce'"),
        (["--method", "esd", "--anchor", "shape"], "takes no anchor"),
        (["--anchor", "star"], "anchor of 'star' is the concept itself"),
    ],
)
def test_bad_erase_input(tmp_path, args, message):
    result = runner.invoke(app, ["erase", "--concept", "star", *args, "--out", str(tmp_path / "e")])
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert not (tmp_path / "e" / "edit.safetensors").exists()


def test_bad_method_config_names_the_field(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("rounds: three\n")
    result = runner.invoke(app, ["erase", "--method", "rece", "--concept", "star", "--config", str(config),
                                 "--out", str(tmp_path / "e")])
    assert result.exit_code == 2 and "the rece erasure method option 'rounds': expected int" in result.stderr
    config.write_text("round: 3\n")
    result = runner.invoke(app, ["erase", "--method", "rece", "--concept", "star", "--config", str(config),
                                 "--out", str(tmp_path / "e")])
    assert result.exit_code == 2 and "has no option 'round'; did you mean 'rounds'?" in result.stderr


def test_generate_with_a_guard(tmp_path):
    args = ["generate", "--prompt", "a red star", "--num-images", "1", "--steps", "3"]
    result = runner.invoke(app, [*args, "--guard", "sld", "--guard-concept", "star", "--guard-preset", "max",
                                 "--out", str(tmp_path / "sld"), "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "sld" / "requests.jsonl").read_text())
    assert record["guard"]["preset"] == "max"
    bad = runner.invoke(app, [*args, "--guard-concept", "star", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "need --guard" in bad.stderr


def test_a_yaml_list_fills_a_tuple_config_field(tmp_path):
    from eraselab.attack import ATTACKS
    from eraselab.cli import _method_config

    config = tmp_path / "c.yaml"
    config.write_text("oracle_seeds: [7, 8, 9]\nbudget: 12\n")
    settings = _method_config(ATTACKS, "concept-arithmetic", config, "tiny")
    assert settings.oracle_seeds == (7, 8, 9) and settings.budget == 12
    config.write_text("oracle_seeds: seven\n")
    with pytest.raises(EraselabError, match="concept-arithmetic attack option 'oracle_seeds': expected tuple"):
        _method_config(ATTACKS, "concept-arithmetic", config, "tiny")


def test_precision_size_and_device_reach_generation_from_the_cli_and_the_experiment(tmp_path, micro_run):
    from PIL import Image

    from eraselab.store import RunStore

    out = tmp_path / "bf16"
    result = runner.invoke(app, ["generate", "--prompt", "a red star", "--dtype", "bfloat16", "--height", "48",
                                 "--width", "16", "--num-images", "2", "--steps", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    assert records[0]["dtype"] == "bfloat16" and records[0]["device"] == "cpu" and records[0]["height"] == 48
    assert all(Image.open(out / r["file"]).size == (16, 48) for r in records)
    experiment = tmp_path / "e.yaml"
    experiment.write_text(json.dumps({
        "models": [str(micro_run / "pipeline")], "device": "cpu", "dtype": "bf16",
        "sampler": {"steps": 2, "height": 16, "width": 24}, "seeds": {"count": 1},
        "detectors": [{"name": "tiny", "classifier": str(micro_run / "classifier")}],
        "groups": [{"suite": "tiny:target:star", "metric": "efficacy", "concept": "shape=star"}]}))
    result = runner.invoke(app, ["run", str(experiment), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    store = RunStore(tmp_path / "run")
    assert {store.load_image(h).size for _, h in store.images()} == {(24, 16)}
