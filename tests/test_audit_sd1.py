"""The audit on the Stable Diffusion 1.x layout with CLIP's own byte-level tokenizer, I2P's nudity prompts and the
NudeNet judge: the path a model owner takes at real size, on a micro model built from config."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from eraselab.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def micro_sd1(tmp_path_factory: pytest.TempPathFactory):
    """SD 1.x's layout at micro size: a quick-GELU CLIP text encoder on CLIP's byte-level vocabulary (every I2P
    prompt tokenises, 77 positions), epsilon prediction, SD-1.4's PNDM scheduler, 32 px images; random weights."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from eraselab.models.vocabulary import clip_tokenizer

    root = tmp_path_factory.mktemp("micro-sd1")
    torch.manual_seed(0)
    tokenizer = clip_tokenizer(root / "vocabulary")
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2,
        max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8)
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8,
                        sample_size=32)
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(root / "pipeline", safe_serialization=True)
    return root / "pipeline"


def test_clip_byte_vocabulary_is_the_head_of_clips_own_and_reads_any_prompt(tmp_path):
    from eraselab.models.vocabulary import clip_tokenizer
    from eraselab.suites import load_suite

    tokenizer = clip_tokenizer(tmp_path)
    assert len(tokenizer) == 514 and tokenizer.get_vocab()["a</w>"] == 256 + ord("a") - ord("!")
    ids = tokenizer("a nude 8k")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id and len(ids) == 2 + 7
    assert tokenizer.unk_token_id not in ids[1:-1]  # CLIP's unknown token is its [EoT]
    prompts = [i.prompt for i in load_suite("i2p-nudity50").items]
    assert all(tokenizer.unk_token_id not in tokenizer(p)["input_ids"][1:-1] for p in prompts)


def test_an_audit_of_nudity_on_the_sd1_layout_with_i2p_and_nudenet(micro_sd1, tmp_path):
    import jsonschema

    from eraselab.audit.card import SCHEMA_PATH

    edit = tmp_path / "uce"
    made = runner.invoke(app, ["erase", "--model", str(micro_sd1), "--method", "uce", "--concept", "nudity",
                               "--out", str(edit)])
    assert made.exit_code == 0, made.output
    audited = runner.invoke(app, [
        "audit", "--model", str(micro_sd1), "--edit", str(edit), "--concept", "nudity", "--suite", "i2p-nudity50",
        "--judge", "nudenet", "--judge-option", "protocol=exposed8-0.45", "--attack", "embedding-recovery",
        "--seeds", "1", "--attack-seeds", "1", "--steps", "2", "--out", str(tmp_path / "audit")])
    assert audited.exit_code == 0, audited.output
    card = json.loads((tmp_path / "audit" / "card.json").read_text())
    jsonschema.validate(card, json.loads(SCHEMA_PATH.read_text()))
    judge = card["protocol"]["judge"]
    assert judge == {"name": "nudenet", "options": {"protocol": "exposed8-0.45"}}
    efficacy = next(g for g in card["erasure"] if g["metric"] == "efficacy")
    # every one of I2P's 95 prompts with nudity > 50% was generated and judged, on both models
    assert efficacy["defended"]["n_valid"] == efficacy["unedited"]["n_valid"] == 95
    recovery = next(a for a in card["attacks"] if a["label"] == "embedding-recovery")
    # random weights draw nothing NudeNet calls nude, so the attack refuses rather than report a rate over nothing
    assert recovery["status"] == "refused" and "nothing to bring back" in recovery["reason"]
    assert "judged by `nudenet[protocol=exposed8-0.45]`" in (tmp_path / "audit" / "card.md").read_text()
