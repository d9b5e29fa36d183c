import shutil

import pytest
import torch
from diffusers import StableDiffusionPipeline

from eraselab.errors import EraselabError
from eraselab.models import load_pipeline, module_fingerprint, pipeline_fingerprint
from eraselab.models.tiny import tiny_path


def test_tiny_loads_as_a_stable_diffusion_pipeline():
    pipe = load_pipeline("tiny")
    assert isinstance(pipe, StableDiffusionPipeline)
    assert pipe.vae_scale_factor == 4 and pipe.unet.config.sample_size * pipe.vae_scale_factor >= 32
    assert pipe.safety_checker is None
    # Plain diffusers loads the shipped directory too, with no eraselab code involved.
    plain = StableDiffusionPipeline.from_pretrained(tiny_path("pipeline"))
    assert pipeline_fingerprint(plain) == pipeline_fingerprint(pipe)


def test_local_directory_loads(micro_run):
    pipe = load_pipeline(micro_run / "pipeline")
    assert pipe.unet.config.block_out_channels == [16, 32] or tuple(pipe.unet.config.block_out_channels) == (16, 32)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("/no/such/dir", "does not exist"),
        ("./relative/missing", "does not exist"),
        ("some-org/some-model", "pass a local diffusers directory"),
    ],
)
def test_bad_sources_give_one_clear_sentence(source, message):
    with pytest.raises(EraselabError, match=message):
        load_pipeline(source)


def test_directory_without_model_index(tmp_path):
    with pytest.raises(EraselabError, match=r"model_index\.json"):
        load_pipeline(tmp_path)


def test_fingerprint_is_stable_across_dtype_and_changes_with_weights(micro_run, tmp_path):
    pipe = load_pipeline(micro_run / "pipeline")
    first = pipeline_fingerprint(pipe)
    assert first == pipeline_fingerprint(load_pipeline(micro_run / "pipeline"))
    assert module_fingerprint(pipe.unet) == module_fingerprint(pipe.unet.to(torch.float16).to(torch.float32))
    copy = tmp_path / "copy"
    shutil.copytree(micro_run / "pipeline", copy)
    changed = load_pipeline(copy)
    with torch.no_grad():
        next(changed.unet.parameters()).view(-1)[0] += 0.5
    assert pipeline_fingerprint(changed) != first
