"""The fine-tuning loop of the trained erasers (eraselab.erase.finetune) on a real diffusers UNet built from config:
resumption to bit-identical weights with accumulation, clipping, AdamW and an EMA; the trained set enforced; exactly
the changed tensors returned; checkpoints that are safetensors and refuse other settings."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors import safe_open

from eraselab.erase.finetune import CHECKPOINT, FineTune, LoopSettings, copy_for_training, frozen_weights
from eraselab.errors import EraselabError


def _unet() -> torch.nn.ModuleDict:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=12, attention_head_dim=2, norm_num_groups=8)
    return torch.nn.ModuleDict({"unet": unet, "unused": torch.nn.Linear(3, 3)})  # "unused": never in the loss


def _self_attention(model: torch.nn.ModuleDict) -> list[str]:
    return [n for n, _ in model.named_parameters() if ".attn1." in n] + ["unused.weight"]


def _denoising(model: torch.nn.ModuleDict):
    def step(_: int, g: torch.Generator) -> torch.Tensor:
        latents, noise = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
        text = torch.randn(2, 5, 12, generator=g)
        t = torch.randint(1000, (2,), generator=g)
        return torch.nn.functional.mse_loss(model["unet"](latents + noise, t, encoder_hidden_states=text).sample,
                                            noise)
    return step


SETTINGS = LoopSettings(iterations=5, lr=1e-2, seed=4, optimizer="adamw", weight_decay=0.0, accumulation=2,
                        clip=0.5, ema_decay=0.9, checkpoint_every=2)


def test_a_stopped_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path):
    whole_model = _unet()
    whole = FineTune(whole_model, _self_attention(whole_model), SETTINGS, {"test": 1}, "test").run(
        _denoising(whole_model), progress=False)
    assert whole and all(".attn1." in n for n in whole)  # exactly the changed tensors: "unused" had no gradient
    assert "unused.weight" not in whole

    settings = LoopSettings(**{**SETTINGS.__dict__, "checkpoint": str(tmp_path / "ckpt")})
    first = _unet()
    assert FineTune(first, _self_attention(first), settings, {"test": 1}, "test").run(
        _denoising(first), progress=False, stop_after=3) is None  # "killed" after step 3
    again = _unet()  # a fresh process: the weights come from the checkpoint
    resumed = FineTune(again, _self_attention(again), settings, {"test": 1}, "test").run(_denoising(again),
                                                                                         progress=False)
    assert set(resumed) == set(whole) and all(torch.equal(whole[n], resumed[n]) for n in whole)

    with safe_open(tmp_path / "ckpt" / CHECKPOINT, "pt") as handle:  # no pickle: tensors and a JSON header
        header = json.loads(handle.metadata()["eraselab"])
    assert header["step"] == 5 and header["ema"]["decay"] == 0.9
    other = _unet()
    with pytest.raises(EraselabError, match="other settings"):
        FineTune(other, _self_attention(other), settings, {"test": 2}, "test")


def test_the_loop_refuses_a_change_outside_the_trained_set():
    model = _unet()
    denoise = _denoising(model)

    def leaky(step: int, g: torch.Generator) -> torch.Tensor:
        with torch.no_grad():
            model["unet"].conv_in.bias.add_(0.1)  # a frozen parameter moves
        return denoise(step, g)

    loop = FineTune(model, _self_attention(model), LoopSettings(iterations=2, lr=1e-3), {}, "leaky")
    with pytest.raises(EraselabError, match=r"outside the trained set changed: unet\.conv_in\.bias"):
        loop.run(leaky, progress=False)


def test_a_copy_for_training_owns_what_it_trains_and_shares_the_rest_which_the_loop_still_checks():
    model = _unet()
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    model.get_parameter("unused.weight").requires_grad_(False)  # a flag of the user's own, restored as it was
    flags["unused.weight"] = False
    trained = _self_attention(model)
    with frozen_weights(model):
        assert not any(p.requires_grad for p in model.parameters())
        copy = copy_for_training(model, trained)
        for name, p in copy.named_parameters():
            original = model.get_parameter(name)
            assert (p is original) == (name not in trained) and torch.equal(p, original)
        result = FineTune(copy, trained, LoopSettings(iterations=2, lr=1e-2), {}, "shared", original=model).run(
            _denoising(copy), progress=False)
        assert result and all(not torch.equal(model.get_parameter(n), t) for n, t in result.items())  # model kept

        leaky_copy = copy_for_training(model, trained)
        denoise = _denoising(leaky_copy)

        def leaky(step: int, g: torch.Generator) -> torch.Tensor:
            with torch.no_grad():
                leaky_copy["unet"].conv_in.bias.add_(1e-6)  # a shared weight moves, in the original as well
            return denoise(step, g)

        loop = FineTune(leaky_copy, trained, LoopSettings(iterations=1, lr=1e-3), {}, "leaky", original=model)
        with pytest.raises(EraselabError, match=r"outside the trained set changed: unet\.conv_in\.bias"):
            loop.run(leaky, progress=False)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags


def test_settings_and_names_are_checked():
    model = _unet()
    with pytest.raises(EraselabError, match=r"no such parameters to train: unet\.nope"):
        FineTune(model, ["unet.nope"], LoopSettings(iterations=1, lr=1e-3), {}, "x")
    with pytest.raises(EraselabError, match="optimizer must be one of adam, adamw"):
        FineTune(model, _self_attention(model), LoopSettings(iterations=1, lr=1e-3, optimizer="sgd"), {}, "x")
    with pytest.raises(EraselabError, match="ema_decay must lie in"):
        FineTune(model, _self_attention(model), LoopSettings(iterations=1, lr=1e-3, ema_decay=1.5), {}, "x")


def test_gradients_are_zeroed_each_step_unless_kept_as_the_official_trce_code_keeps_them(tmp_path):
    def run(keep: bool, stop_after: int | None = None, checkpoint: str | None = None):
        model = _unet()
        loop = FineTune(model, _self_attention(model), LoopSettings(iterations=3, lr=0.0, seed=1, keep_gradients=keep,
                                                                    checkpoint=checkpoint), {}, "grads")
        loop.run(_denoising(model), progress=False, stop_after=stop_after)
        return {n: p.grad for n, p in model.named_parameters() if n in loop.names}

    assert all(g is None for g in run(keep=False).values())  # zeroed (set to None) after every step
    kept = run(keep=True)
    reference = _unet()  # with lr 0 the weights stay put: the kept gradient is the sum of the three steps'
    step = _denoising(reference)
    total = torch.autograd.grad(sum(step(s, torch.Generator().manual_seed(1 * 1_000_003 + s)) for s in range(3)),
                                [reference.get_parameter(n) for n in kept if n != "unused.weight"])
    names = [n for n in kept if n != "unused.weight"]
    assert all(torch.allclose(kept[n], g, atol=1e-6) for n, g in zip(names, total, strict=True))
    run(keep=True, stop_after=2, checkpoint=str(tmp_path / "ckpt"))  # the checkpoint carries the kept sum
    resumed = run(keep=True, checkpoint=str(tmp_path / "ckpt"))
    assert all(torch.equal(kept[n], resumed[n]) for n in names)
