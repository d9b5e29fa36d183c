import json

import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from eraselab.models.tiny.classifier import load_classifier
from eraselab.models.tiny.train import train_tiny

WEIGHTS = ["pipeline/unet/diffusion_pytorch_model.safetensors", "pipeline/vae/diffusion_pytorch_model.safetensors",
           "pipeline/text_encoder/model.safetensors", "clip/model.safetensors", "classifier/model.safetensors"]


def test_micro_run_writes_a_loadable_pipeline_and_classifier(micro_run):
    pipe = StableDiffusionPipeline.from_pretrained(micro_run / "pipeline")
    image = pipe("a red star", num_inference_steps=2, output_type="np").images
    assert image.shape == (1, 32, 32, 3)
    judge = load_classifier(micro_run / "classifier")
    assert set(judge.classes) == {"shape", "color", "fill", "background"}
    log = json.loads((micro_run / "train_log.json").read_text())
    assert log["complete"] and set(log["stages"]) == {"vae", "clip", "unet", "classifier"}
    assert 0 < pipe.vae.config.scaling_factor < 100


def test_a_paused_and_resumed_run_equals_an_uninterrupted_one(micro_run, micro_config, tmp_path):
    sizes, steps = micro_config
    pauses = []
    while True:  # stop after every 2 optimisation steps, as a session ending mid-run would
        log = train_tiny(tmp_path, seed=0, sizes=sizes, steps=steps, stop_after_steps=2)
        pauses.append(log.get("paused_in"))
        if log["complete"]:
            break
    assert len(pauses) > 4
    for name in WEIGHTS:
        a, b = load_file(micro_run / name), load_file(tmp_path / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
