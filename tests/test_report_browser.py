"""Open a real report in headless Chromium: the tables render and every image loads."""

import os
import re
import shutil
import subprocess

import numpy as np
import pytest
import yaml
from PIL import Image

from eraselab.experiment import run_experiment
from eraselab.experiment.parse import load_experiment
from eraselab.report import write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-quic", "--virtual-time-budget=5000"]

if CHROMIUM is None and os.environ.get("CI"):
    pytest.fail("CI must install Debian's chromium (see .ci/run)", pytrace=False)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")


def test_report_renders_tables_and_loads_every_image(tmp_path, micro_run):
    config = {"name": "browser", "models": [str(micro_run / "pipeline")], "seeds": [0, 1],
              "sampler": {"steps": 2}, "detectors": [{"name": "tiny", "classifier": str(micro_run / "classifier")}],
              "groups": [{"suite": "tiny:target:star", "metric": "efficacy", "concept": "shape=star"}]}
    (tmp_path / "e.yaml").write_text(yaml.safe_dump(config))
    run_experiment(load_experiment(tmp_path / "e.yaml"), tmp_path / "run", progress=False)
    page, _ = write_report(tmp_path / "run")
    url = page.resolve().as_uri()
    profile = ["--user-data-dir=" + str(tmp_path / "profile")]
    dom = subprocess.run([CHROMIUM, *FLAGS, *profile, "--dump-dom", url], capture_output=True, text=True,
                         timeout=120).stdout
    loaded = re.search(r'data-images-loaded="(\d+)/(\d+)"', dom)
    assert loaded, "the page's load script did not run"
    assert int(loaded.group(1)) == int(loaded.group(2)) >= 13  # 12 grid images + the metrics plot
    assert dom.count("<table") >= 3 and "efficacy" in dom

    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, *FLAGS, *profile, f"--screenshot={shot}", "--window-size=1200,1600", url],
                   capture_output=True, timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.std() > 10  # not a blank page


def test_the_audit_card_renders_its_tables_plot_and_before_after_images(tmp_path, small_audit):
    _, audit, _ = small_audit
    url = (audit / "card.html").resolve().as_uri()
    profile = ["--user-data-dir=" + str(tmp_path / "profile")]
    dom = subprocess.run([CHROMIUM, *FLAGS, *profile, "--dump-dom", url], capture_output=True, text=True,
                         timeout=120).stdout
    loaded = re.search(r'data-images-loaded="(\d+)/(\d+)"', dom)
    assert loaded, "the page's load script did not run"
    assert int(loaded.group(1)) == int(loaded.group(2)) == 2 * 3 + 1  # 3 before/after pairs + the attack plot
    assert dom.count("<table") == 3 and "embedding-recovery" in dom and "Strongest attack" in dom
