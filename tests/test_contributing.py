"""The contributing guide's worked example of a new part (a detector in one file, one registration line, in
docs/contributing.md) runs as written and judges an experiment end to end, its options checked like a built-in
detector's."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from eraselab.errors import EraselabError
from eraselab.experiment import run_experiment
from eraselab.experiment.parse import load_experiment
from eraselab.judge.detectors import DETECTORS, make_detector
from eraselab.store import RunStore

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "contributing.md"


@pytest.fixture(scope="module")
def brightness(tmp_path_factory: pytest.TempPathFactory) -> str:
    text = GUIDE.read_text(encoding="utf-8")
    block = text.split("<!-- contributing-example -->\n```python\n", 1)[1].split("```", 1)[0]
    path = tmp_path_factory.mktemp("plugin") / "brightness.py"
    path.write_text(block)
    spec = importlib.util.spec_from_file_location("eraselab_example_brightness", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if "brightness" not in DETECTORS:
        DETECTORS.register("brightness")(module.BrightnessDetector)  # the one registration line
    return "brightness"


def test_the_worked_example_judges_an_experiment(tmp_path, micro_run, brightness):
    detector = make_detector(brightness, threshold=0.2)
    assert detector.label_for("anything") == "bright" and detector.settings() == {"threshold": 0.2}
    config = {"name": "bright", "models": [str(micro_run / "pipeline")], "seeds": [0, 1],
              "sampler": {"steps": 2, "guidance": 5.0}, "detectors": [{"name": brightness, "threshold": 0.0}],
              "groups": [{"suite": "tiny:target:star", "metric": "presence", "concept": "bright"}]}
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(config))
    run_experiment(load_experiment(path), tmp_path / "run", progress=False)
    (metric,) = RunStore(tmp_path / "run").metrics()
    assert metric["value"]["value"] == 1.0 and metric["value"]["n_valid"] == 12  # every image is brighter than black

    config["detectors"] = [{"name": brightness, "treshold": 0.4}]
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(EraselabError, match=r"brightness detector has no option 'treshold'; did you mean 'threshold'"):
        run_experiment(load_experiment(path), tmp_path / "run2", progress=False)
    assert not (tmp_path / "run2" / "store.sqlite").exists()
