"""Shared fixtures: a micro tiny-world run trained for a few steps (real diffusers/transformers modules)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from eraselab.models.tiny.architecture import TinySizes
from eraselab.models.tiny.stages import TrainSteps
from eraselab.models.tiny.train import train_tiny

MICRO_SIZES = TinySizes(vae_channels=(8, 16, 16), unet_channels=(16, 32), text_width=32, vision_width=32,
                        text_layers=1, vision_layers=1, projection=16, classifier_channels=(8, 16, 16), unet_heads=2)
MICRO_STEPS = TrainSteps(vae=3, clip=3, unet=3, classifier=3, vae_batch=4, clip_batch=8, unet_batch=4,
                         classifier_batch=4, latent_pool=32, checkpoint_every=2)


@pytest.fixture(scope="session")
def readme_apply():
    """The plain-diffusers recipe of docs/erasing.md for applying an edit, as a user without eraselab runs it."""
    from safetensors.torch import load_file

    def apply(pipe, edit_dir: Path) -> None:
        for name, tensor in load_file(edit_dir / "edit.safetensors").items():
            component, parameter = name.split(".", 1)
            getattr(pipe, component).get_parameter(parameter).data.copy_(tensor)
    return apply


class _PlainGuard:
    """A guard whose rule is plain classifier-free guidance: generation through eraselab's own guided loop."""

    name, label = "plain", "plain"

    def settings(self):
        return {}

    def rewrite(self, request):
        return request

    def guidance_rule(self, pipe):
        from eraselab.sampling import PlainGuidance

        return PlainGuidance()


@pytest.fixture(scope="session")
def plain_guard():
    """The guided loop under plain guidance, for parity tests against the pipeline's own ``__call__``."""
    return _PlainGuard()


@pytest.fixture(scope="session", autouse=True)
def _threads() -> None:
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def micro_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete micro run directory (pipeline/, clip/, classifier/), trained uninterrupted."""
    out = tmp_path_factory.mktemp("micro-run")
    log = train_tiny(out, seed=0, sizes=MICRO_SIZES, steps=MICRO_STEPS)
    assert log["complete"]
    return out


@pytest.fixture(scope="session")
def micro_config() -> tuple[TinySizes, TrainSteps]:
    return MICRO_SIZES, MICRO_STEPS


@pytest.fixture(scope="session")
def micro_sd2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Stable Diffusion 2.x-shaped pipeline directory built from config with random weights: v-prediction,
    linear projections in the transformer blocks, per-block head counts, a GELU text encoder whose
    penultimate-free output feeds the UNet (the OpenCLIP layout diffusers converts SD 2 to), 32 px images. The
    tiny world's tokenizer, so its prompts tokenise, padding with "!" rather than the end token as SD 2's OpenCLIP
    tokenizer does, and the legacy eos/pad ids SD 2's text-encoder config carries; nothing is downloaded."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from eraselab.models.tiny import tiny_path

    torch.manual_seed(0)
    tokenizer = CLIPTokenizer.from_pretrained(tiny_path() / "tokenizer", pad_token="!")
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2,
        max_position_embeddings=tokenizer.model_max_length, hidden_act="gelu", projection_dim=32,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=2, pad_token_id=1))
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=(2, 4), use_linear_projection=True, norm_num_groups=8)
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8,
                        sample_size=32)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction")
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    out = tmp_path_factory.mktemp("micro-sd2") / "pipeline"
    pipe.save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="session")
def micro_sdxl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SDXL-shaped pipeline directory built from config with random weights: two text encoders of different
    widths (32 and 48: a 80-wide concatenated context), the second with a text projection whose pooled output joins
    the time embedding ("text_time", six micro-conditioning ids), Euler sampling as SDXL base ships, transformer
    depth per block, 32 px images; the tiny world's tokenizer for both encoders, the second padding with "!" rather
    than the end token, as SDXL base's second tokenizer does. Nothing is downloaded."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from eraselab.models.tiny import tiny_path

    torch.manual_seed(0)
    tokenizer = CLIPTokenizer.from_pretrained(tiny_path() / "tokenizer")
    padded_with_bang = CLIPTokenizer.from_pretrained(tiny_path() / "tokenizer", pad_token="!")  # as SDXL's second

    def text_config(width: int) -> CLIPTextConfig:
        return CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width,
                              num_attention_heads=2, num_hidden_layers=2, projection_dim=width, hidden_act="gelu",
                              max_position_embeddings=tokenizer.model_max_length, bos_token_id=tokenizer.bos_token_id,
                              eos_token_id=2, pad_token_id=1)  # the legacy ids SDXL base's configs carry

    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=80, attention_head_dim=(2, 4), transformer_layers_per_block=(1, 2),
        use_linear_projection=True, norm_num_groups=8, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=48 + 6 * 8)
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8,
                        sample_size=32)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=CLIPTextModel(text_config(32)),
                                     text_encoder_2=CLIPTextModelWithProjection(text_config(48)), tokenizer=tokenizer,
                                     tokenizer_2=padded_with_bang, unet=unet, scheduler=scheduler)
    out = tmp_path_factory.mktemp("micro-sdxl") / "pipeline"
    pipe.save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="session")
def small_audit(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str]]:
    """(the UCE edit of star, the directory of its audit, the audit's options): a short protocol (1 seed, 3 steps)
    whose budget of 0 UNet evaluations runs the closed-form and text-encoder attacks only."""
    from typer.testing import CliRunner

    from eraselab.cli import app

    root = tmp_path_factory.mktemp("audit")
    made = CliRunner().invoke(app, ["erase", "--method", "uce", "--concept", "star", "--anchor", "shape",
                                    "--out", str(root / "uce-star")])
    assert made.exit_code == 0, made.output
    options = ["--concept", "star", "--seeds", "1", "--attack-seeds", "1", "--budget", "0", "--steps", "3"]
    audited = CliRunner().invoke(app, ["audit", "--edit", str(root / "uce-star"), *options,
                                       "--out", str(root / "audit")])
    assert audited.exit_code == 0, audited.output
    return root / "uce-star", root / "audit", options
