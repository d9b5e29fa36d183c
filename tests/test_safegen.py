"""SafeGen (eraselab.erase.safegen) on real diffusers modules: the micro tiny-world pipeline and a micro SD 2.x
(v-prediction) pipeline built from config."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, StableDiffusionPipeline
from PIL import Image
from safetensors.torch import load_file

from eraselab.erase.registry import ERASERS
from eraselab.erase.safegen import SafeGenConfig, box_region, mosaic, mosaic_target
from eraselab.erase.spec import EraseSpec
from eraselab.errors import EraselabError
from eraselab.models import load_pipeline
from eraselab.options import build
from eraselab.profile import TINY

SHORT = {"iterations": 4, "batch_size": 2, "checkpoint_every": 2}


def test_only_self_attention_changes_the_edit_applies_in_plain_diffusers_and_a_resume_is_exact(micro_run, tmp_path,
                                                                                        readme_apply):
    pipe = load_pipeline(micro_run / "pipeline")
    erase = ERASERS.get("safegen").erase
    spec = EraseSpec(("star",))
    whole = erase(pipe, spec, build(ERASERS, "safegen", SHORT, TINY), progress=False)
    attn1 = {f"unet.{n}" for n, _ in pipe.unet.named_parameters() if ".attn1." in n}
    assert whole.tensors and set(whole.tensors) <= attn1  # nothing outside self-attention (the loop checks the rest)
    assert whole.manifest["method"] == "safegen"

    config = build(ERASERS, "safegen", {**SHORT, "checkpoint": str(tmp_path / "ckpt")}, TINY)
    assert erase(pipe, spec, config, progress=False, stop_after=2) is None
    resumed = erase(pipe, spec, config, progress=False)
    assert all(torch.equal(whole.tensors[k], resumed.tensors[k]) for k in whole.tensors)

    whole.save(tmp_path / "edit")  # the plain-diffusers snippet of docs/erasing.md
    plain = StableDiffusionPipeline.from_pretrained(micro_run / "pipeline", safety_checker=None)
    readme_apply(plain, tmp_path / "edit")
    assert torch.equal(plain.unet.get_parameter(next(iter(whole.tensors))[len("unet."):]),
                       next(iter(whole.tensors.values())))


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_the_exact_target_implies_the_mosaic_and_the_offset_is_the_scripts(prediction):
    scheduler = DDPMScheduler(prediction_type=prediction)
    g = torch.Generator().manual_seed(0)
    z_c, z_m, eps = (torch.randn(3, 4, 4, 4, generator=g) for _ in range(3))
    t = torch.tensor([10, 500, 990])
    x_t = scheduler.add_noise(z_c, eps, t)
    a = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    exact = mosaic_target(scheduler, x_t, eps, z_c, z_m, t, "x0")
    implied = (a.sqrt() * x_t - (1 - a).sqrt() * exact if prediction == "v_prediction"
               else (x_t - (1 - a).sqrt() * exact) / a.sqrt())
    assert torch.allclose(implied, z_m, atol=1e-4)  # the prediction's x_0 is the mosaic
    offset = mosaic_target(scheduler, x_t, eps, z_c, z_m, t, "offset")
    expected = scheduler.get_velocity(z_c - z_m, eps, t) if prediction == "v_prediction" else eps + z_c - z_m
    assert torch.equal(offset, expected)


def test_mosaic_pixelates_only_the_region():
    image = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
    out = mosaic(image, box_region(image.shape, [(2, 2, 6, 6)]), 2)
    assert np.array_equal(out[:2], image[:2]) and np.array_equal(out[:, :2], image[:, :2])
    assert (out[2:4, 2:4] == np.round(image[2:4, 2:4].reshape(-1, 3).mean(0))).all()
    region = np.zeros((8, 8), dtype=bool)
    region[[1, 2, 2], [1, 1, 2]] = True  # not a box: only its pixels change, each square to their own mean
    out = mosaic(image, region, 2)
    assert np.array_equal(out[~region], image[~region])
    assert (out[1:3, 1:3][region[1:3, 1:3]] == np.round(image[region].reshape(-1, 3).mean(0))).all()


def _folders(tmp_path, masks: list[tuple[int, int, int, int] | None]):
    rng = np.random.default_rng(0)
    for folder in ("concept", "benign", "masks"):
        (tmp_path / folder).mkdir()
    for i, box in enumerate(masks):
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(tmp_path / "concept" / f"{i}.png")
        mask = np.zeros((24, 24), dtype=np.uint8)  # half the image's size: masks are resized to it
        if box is not None:
            top, left, bottom, right = box
            mask[top:bottom, left:right] = 255
        Image.fromarray(mask).save(tmp_path / "masks" / f"{i}.png")
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "benign" / f"b{i}.jpg")


def test_safegen_data_pixelates_the_masked_regions_into_a_csv_the_method_reads(tmp_path):
    from typer.testing import CliRunner

    from eraselab.cli import app
    from eraselab.erase.safegen import CsvTriplets

    _folders(tmp_path, [(2, 4, 10, 12), None, (0, 0, 24, 24)])
    out = tmp_path / "data"
    result = CliRunner().invoke(app, ["safegen-data", "--concept-images", str(tmp_path / "concept"), "--benign-images",
                                      str(tmp_path / "benign"), "--masks", str(tmp_path / "masks"), "--out", str(out),
                                      "--block", "4"])
    assert result.exit_code == 0, result.output
    assert "2 triplets" in result.output and "1 concept images without a region" in result.output
    assert (out / "skipped.txt").read_text() == "1.png\n"  # an empty mask teaches nothing
    rows = (out / "triplets.csv").read_text().splitlines()
    assert rows == ["concept,mosaic,benign", "../concept/0.png,mosaic/0.png,../benign/b0.jpg",
                    "../concept/2.png,mosaic/2.png,../benign/b1.jpg"]
    before = np.asarray(Image.open(tmp_path / "concept" / "0.png"))
    after = np.asarray(Image.open(out / "mosaic" / "0.png"))
    inside = np.zeros((48, 48), dtype=bool)
    inside[4:20, 8:24] = True  # the mask's box at the image's size
    assert np.array_equal(after[~inside], before[~inside]) and not np.array_equal(after[inside], before[inside])
    assert (after[4:8, 8:12] == after[4, 8]).all()  # a 4-pixel square of one colour
    concept, mosaics, benign = CsvTriplets(str(out / "triplets.csv"), 32).draw(np.random.default_rng(0), 2, 3)
    assert len(concept) == len(mosaics) == 2 and len(benign) == 3 and concept[0].shape == (32, 32, 3)


def test_safegen_data_takes_nudenet_boxes_and_refuses_when_nothing_is_found(tmp_path):
    from eraselab.erase.safegen_data import build_triplets, detection_region

    found = {"detections": [{"class": "FEMALE_BREAST_EXPOSED", "score": 0.9, "box": [5, 2, 10, 4]},
                            {"class": "FEMALE_BREAST_EXPOSED", "score": 0.5, "box": [0, 0, 3, 3]},  # below 0.6
                            {"class": "FACE_FEMALE", "score": 0.99, "box": [20, 20, 4, 4]}]}  # not counted
    region = detection_region(found, ("FEMALE_BREAST_EXPOSED",), 0.6, (32, 32, 3))
    assert region.sum() == 40 and region[2:6, 5:15].all()  # NudeNet's [x, y, width, height]
    _folders(tmp_path, [None, None])
    with pytest.raises(EraselabError, match=r"no region found in any of the 2 concept images \(NudeNet"):
        build_triplets(tmp_path / "concept", tmp_path / "benign", tmp_path / "data", progress=False)  # noise: none
    with pytest.raises(EraselabError, match=r"no mask named like 0\.png"):
        build_triplets(tmp_path / "concept", tmp_path / "benign", tmp_path / "data", masks=tmp_path / "benign")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EraselabError, match="benign images: no images"):
        build_triplets(tmp_path / "concept", tmp_path / "empty", tmp_path / "data")


def test_real_models_train_from_a_triplet_csv_and_need_one(micro_sd2, tmp_path):
    import json
    import shutil

    model = shutil.copytree(micro_sd2, tmp_path / "model")  # its tokenizer opened up: a "real" model to eraselab
    config_path = model / "tokenizer" / "tokenizer_config.json"
    config_path.write_text(json.dumps({k: v for k, v in json.loads(config_path.read_text()).items()
                                       if k != "closed_vocabulary"}))
    pipe = load_pipeline(model)
    spec = EraseSpec(("star",))
    with pytest.raises(EraselabError, match="needs image triplets"):
        ERASERS.get("safegen").erase(pipe, spec, SafeGenConfig(iterations=1), progress=False)
    rng = np.random.default_rng(0)
    for name in ("c", "m", "b"):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / f"{name}.png")
    (tmp_path / "triplets.csv").write_text("concept,mosaic,benign\nc.png,m.png,b.png\n")
    config = SafeGenConfig(iterations=2, accumulation=2, triplets=str(tmp_path / "triplets.csv"), ema_decay=0.9)
    edit = ERASERS.get("safegen").erase(pipe, spec, config, progress=False)
    assert edit.tensors and all(".attn1." in name for name in edit.tensors)  # v-prediction, EMA, accumulation
    (tmp_path / "bad.csv").write_text("image\nc.png\n")
    with pytest.raises(EraselabError, match="columns concept, mosaic, benign"):
        ERASERS.get("safegen").erase(pipe, spec, SafeGenConfig(iterations=1, triplets=str(tmp_path / "bad.csv")),
                                     progress=False)


def test_edits_that_change_disjoint_tensors_stack_and_overlapping_ones_are_refused(micro_run, tmp_path):
    from typer.testing import CliRunner

    from eraselab.cli import app
    from eraselab.erase.artifact import apply_edits
    from eraselab.models import pipeline_fingerprint

    pipe = load_pipeline(micro_run / "pipeline")
    spec = EraseSpec(("star",), ("shape",), templates=("a {}",))
    safegen = ERASERS.get("safegen").erase(pipe, EraseSpec(("star",)), build(ERASERS, "safegen", SHORT, TINY),
                                           progress=False).save(tmp_path / "safegen")
    uce = ERASERS.get("uce").erase(pipe, spec, build(ERASERS, "uce", {}, TINY)).save(tmp_path / "uce")
    rece = ERASERS.get("rece").erase(pipe, spec, build(ERASERS, "rece", {}, TINY)).save(tmp_path / "rece")
    before = pipeline_fingerprint(pipe)
    with apply_edits(pipe, [uce, safegen]):  # cross-attention K/V beside self-attention: both applied
        for path in (uce, safegen):
            for name, tensor in load_file(path / "edit.safetensors").items():
                assert torch.equal(pipe.unet.get_parameter(name[len("unet."):]), tensor)
    assert pipeline_fingerprint(pipe) == before  # undone, both
    with pytest.raises(EraselabError, match="edits 1 and 2 of the stack both change"):
        apply_edits(pipe, [uce, rece])  # both rewrite the cross-attention keys and values
    assert pipeline_fingerprint(pipe) == before  # refused before any weight changed

    result = CliRunner().invoke(app, ["generate", "--model", str(micro_run / "pipeline"), "--prompt", "a red star",
                                      "--steps", "2", "--edit", str(uce), "--edit", str(safegen),
                                      "--out", str(tmp_path / "images")])
    assert result.exit_code == 0, result.output
    record = (tmp_path / "images" / "requests.jsonl").read_text()
    assert f"{uce}+{safegen}" in record


def test_an_experiment_generates_and_attacks_a_stack_and_the_report_names_it_by_its_parts(tmp_path):
    import json

    import yaml

    from eraselab.erase.artifact import apply_edits
    from eraselab.experiment import run_experiment
    from eraselab.experiment.parse import load_experiment
    from eraselab.generate import generate_images
    from eraselab.report import write_report
    from eraselab.requests import GenerationRequest
    from eraselab.store import RunStore

    pipe = load_pipeline("tiny")  # the attack needs a model that draws stars before it is edited
    spec = EraseSpec(("star",), ("shape",), templates=("a {}",))
    safegen = ERASERS.get("safegen").erase(pipe, EraseSpec(("star",)), build(ERASERS, "safegen", SHORT, TINY),
                                           progress=False).save(tmp_path / "safegen")
    uce = ERASERS.get("uce").erase(pipe, spec, build(ERASERS, "uce", {}, TINY)).save(tmp_path / "uce")
    rece = ERASERS.get("rece").erase(pipe, spec, build(ERASERS, "rece", {}, TINY)).save(tmp_path / "rece")
    prompts = tmp_path / "stars.csv"
    prompts.write_text("prompt\na red star\na blue star\n")
    config = {"name": "stack", "models": ["tiny"], "seeds": [0], "edits": ["base", [str(uce), str(safegen)]],
              "sampler": {"steps": 10, "guidance": 5.0},
              "groups": [{"suite": str(prompts), "metric": "efficacy", "concept": "shape=star"}],
              "attacks": [{"name": "concept-vector", "concept": "star", "suite": str(prompts), "seeds": 1}]}
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump({**config, "edits": ["base", [str(uce), str(rece)]]}))
    with pytest.raises(EraselabError, match=r"edits\[1\]': edits 1 and 2 of the stack both change"):
        run_experiment(load_experiment(path), tmp_path / "refused", progress=False)
    path.write_text(yaml.safe_dump(config))
    summary = run_experiment(load_experiment(path), tmp_path / "run", progress=False)
    assert summary["counts"]["images"] == 2 * 2 and summary["attacks"]["run"] == 2
    stacked = f"{uce}+{safegen}"
    images = {m["inputs"]["edit"]: [i["flag"] for i in m["value"]["items"]]
              for m in RunStore(tmp_path / "run").metrics() if m["name"] == "efficacy"}
    assert set(images) == {"base", stacked}
    store = RunStore(tmp_path / "run")
    key, image_hash = next((k, h) for k, h in store.images() if "+edit:" in store.request(k)["edit"])
    request = store.request(key)
    with apply_edits(pipe, [uce, safegen]):  # the stack's images are those of both edits applied together
        image = generate_images(pipe, [GenerationRequest(request["prompt"], request["seed"], request["steps"],
                                                         request["guidance"])], progress=False)[0]
    assert np.array_equal(np.asarray(image), np.asarray(store.load_image(image_hash)))
    records = [json.loads(p.read_text()) for p in (tmp_path / "run" / "attacks").glob("*/summary.json")]
    assert stacked in {r["edit"] for r in records}
    page, _ = write_report(tmp_path / "run")
    assert "<td>uce+safegen" in page.read_text()


def test_more_benign_images_and_low_noise_timesteps_are_options_checked_before_training(micro_run):
    with pytest.raises(EraselabError, match="benign_ratio must be >= 1 and mosaic_steps in"):
        SafeGenConfig(benign_ratio=0)
    with pytest.raises(EraselabError, match="trainable must be one of attn1, unet, got 'attn2'"):
        SafeGenConfig(trainable="attn2")
    with pytest.raises(EraselabError, match="benign_ratio must be >= 1 and mosaic_steps in"):
        SafeGenConfig(mosaic_steps=0.0)
    pipe = load_pipeline(micro_run / "pipeline")
    config = build(ERASERS, "safegen", {**SHORT, "benign_ratio": 2, "mosaic_steps": 0.3}, TINY)
    edit = ERASERS.get("safegen").erase(pipe, EraseSpec(("star",)), config, progress=False)
    assert edit.tensors and all(".attn1." in n for n in edit.tensors)
    ablation = build(ERASERS, "safegen", {**SHORT, "trainable": "unet"}, TINY)  # every UNet weight may move
    whole = ERASERS.get("safegen").erase(pipe, EraseSpec(("star",)), ablation, progress=False)
    assert "unet.conv_in.weight" in whole.tensors and len(whole.tensors) > 2 * len(edit.tensors)
