"""AdvUnlearn (eraselab.erase.advunlearn) on the micro tiny-world pipeline: only the text encoder's layers change,
the inner attack leaves the encoder's gradients alone, a resume past the warm-up is exact (the adversary's prefix is in
the checkpoint), and the edit applies in plain diffusers."""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionPipeline

from eraselab.erase.advunlearn import _Setting, pipeline_encoders, text_encoder_parameters
from eraselab.erase.registry import ERASERS
from eraselab.erase.spec import EraseSpec
from eraselab.errors import EraselabError
from eraselab.models import load_pipeline
from eraselab.options import build
from eraselab.profile import TINY

SHORT = {"iterations": 4, "warmup": 1, "attack_steps": 2, "ddim_steps": 3, "retain_batch": 2, "checkpoint_every": 1}


def test_only_the_text_encoder_layers_change_a_resume_is_exact_and_plain_diffusers_applies_it(micro_run, tmp_path,
                                                                                           readme_apply):
    pipe = load_pipeline(micro_run / "pipeline")
    erase = ERASERS.get("advunlearn").erase
    spec = EraseSpec(("star",), preserve=("circle",), templates=("a {}", "a red {}"))
    whole = erase(pipe, spec, build(ERASERS, "advunlearn", SHORT, TINY), progress=False)
    layers = {f"text_encoder.{n}" for n in text_encoder_parameters(pipe.text_encoder)}
    assert whole.tensors and set(whole.tensors) <= layers
    assert not any("embedding" in n for n in whole.tensors) and whole.manifest["method"] == "advunlearn"

    config = build(ERASERS, "advunlearn", {**SHORT, "checkpoint": str(tmp_path / "ckpt")}, TINY)
    assert erase(pipe, spec, config, progress=False, stop_after=2) is None  # past the warm-up: a prefix exists
    resumed = erase(pipe, spec, config, progress=False)
    assert all(torch.equal(whole.tensors[k], resumed.tensors[k]) for k in whole.tensors)

    whole.save(tmp_path / "edit")  # the plain-diffusers snippet of docs/erasing.md
    plain = StableDiffusionPipeline.from_pretrained(micro_run / "pipeline", safety_checker=None)
    readme_apply(plain, tmp_path / "edit")
    assert torch.equal(plain.text_encoder.get_parameter(next(iter(whole.tensors)).split(".", 1)[1]),
                       whole.tensors[next(iter(whole.tensors))])

    for variant in ({"attack": "fast-at"}, {"attack_init": "random"}):  # the official code's other settings run
        assert erase(pipe, spec, build(ERASERS, "advunlearn", {**SHORT, **variant}, TINY), progress=False).tensors
    with pytest.raises(EraselabError, match="attack must be one of pgd, fast-at"):
        erase(pipe, spec, build(ERASERS, "advunlearn", {**SHORT, "attack": "free"}, TINY))
    with pytest.raises(EraselabError, match="takes no anchor"):
        erase(pipe, EraseSpec(("star",), ("shape",)), build(ERASERS, "advunlearn", SHORT, TINY))


def test_the_inner_attack_moves_the_prefix_and_leaves_the_encoder_gradients_alone(micro_run):
    import copy

    pipe = load_pipeline(micro_run / "pipeline")
    trained = copy.deepcopy(pipeline_encoders(pipe))
    config = build(ERASERS, "advunlearn", SHORT, TINY)
    setting = _Setting(pipe, trained, config, ["a star"], [])
    start = trained["text_encoder"].get_input_embeddings().weight[[5]][None].detach().clone()  # one word's embedding
    (found,) = setting.inner_attack("a star", [start], torch.Generator().manual_seed(0))
    assert found.shape == start.shape and not torch.equal(found, start) and not found.requires_grad
    assert all(p.grad is None for p in trained.parameters())


def test_the_report_marks_an_attack_on_the_conditioning_against_a_text_encoder_edit():
    from eraselab.report import _bypass

    record = {"space": "conditioning", "edit_components": ["text_encoder"], "guard": None}
    assert "bypasses the edit" in _bypass(record)
    assert "bypasses the edit" in _bypass({**record, "edit_components": ["text_encoder", "text_encoder_2"]})  # SDXL
    assert _bypass({**record, "edit_components": ["unet"]}) == ""  # a UNet edit sees the conditioning
    assert _bypass({**record, "edit_components": ["text_encoder", "unet"]}) == ""  # a stack with a UNet edit
    assert _bypass({**record, "edit_components": []}) == ""
    assert _bypass({**record, "space": "typed-text"}) == ""  # typed text goes through the edited encoder
