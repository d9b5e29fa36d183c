"""TRCE's stage 2 (eraselab.erase.trce) on the micro tiny-world pipeline: what it trains over the stage-1 edit, the
trajectories it keeps, exact resumption, the ablation's stage 2 alone, and the official code's kept gradients."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from eraselab.erase.registry import ERASERS
from eraselab.erase.spec import EraseSpec
from eraselab.erase.trce import contrastive_loss
from eraselab.errors import EraselabError
from eraselab.models import load_pipeline
from eraselab.options import build
from eraselab.profile import TINY

SHORT = {"sampler_steps": 4, "trajectories_per_pair": 1, "unconditional_trajectories": 2, "epochs": 2,
         "checkpoint_every": 1, "lr": 1e-3}


def test_the_contrastive_loss_is_eq_7():
    anchors, positive, negative = torch.tensor([[0.0, 0.0], [3.0, 1.0]]), torch.tensor([1.0, 1.0]), torch.zeros(2)
    # anchor 0: ||a-f+||^2 = 1, ||a-f-||^2 = 0 -> 1.01; anchor 1: 2 - 5 + 0.01 < 0 -> 0
    assert torch.isclose(contrastive_loss(anchors, positive, negative, 0.01), torch.tensor(1.01 / 2))


def test_stage_two_trains_self_attention_and_queries_over_stage_one_and_resumes_exactly(micro_run, tmp_path):
    pipe = load_pipeline(micro_run / "pipeline")
    erase = ERASERS.get("trce").erase
    spec = EraseSpec(("star",), ("shape",), templates=("a {}", "a red {}"))
    store = tmp_path / "trajectories.safetensors"

    def config(**options):
        return build(ERASERS, "trce", {**SHORT, "trajectories": str(store), **options}, TINY)

    one = erase(pipe, spec, config(stages="1"))
    both = erase(pipe, spec, config(), progress=False)
    stage_one = set(one.tensors)  # cross-attention keys and values, frozen in stage 2
    assert stage_one <= set(both.tensors) and all(torch.equal(one.tensors[k], both.tensors[k]) for k in stage_one)
    trained = set(both.tensors) - stage_one
    assert trained and all(".attn1." in n or ".attn2.to_q." in n for n in trained)
    assert both.manifest["stage"] == "1,2" and both.manifest["seed"] == 0
    files = sorted(tmp_path.glob("trajectories-*.safetensors"))
    assert [f.name for f in files] == ["trajectories-malicious.safetensors", "trajectories-unconditional.safetensors"]
    written = [f.stat().st_mtime_ns for f in files]
    steps = {f.name: load_file(f)["timesteps"].numel() for f in files}  # the schedule's steps each file holds
    # stage 2 trains on the early half of the malicious trajectories; Eq. 8 regularises the whole schedule
    assert steps == {"trajectories-malicious.safetensors": 2, "trajectories-unconditional.safetensors": 4}

    resumable = config(checkpoint=str(tmp_path / "ckpt"))
    assert erase(pipe, spec, resumable, progress=False, stop_after=1) is None  # "killed" after step 1
    resumed = erase(pipe, spec, resumable, progress=False)
    assert set(resumed.tensors) == set(both.tensors)
    assert all(torch.equal(both.tensors[k], resumed.tensors[k]) for k in both.tensors)
    assert [f.stat().st_mtime_ns for f in files] == written  # the trajectories were read back, not sampled again

    alone = erase(pipe, spec, config(stages="2"), progress=False)  # the ablation: from the base model
    assert alone.tensors and not set(alone.tensors) & stage_one
    kept = erase(pipe, spec, config(keep_gradients=True), progress=False)  # the official code's summed gradients
    assert any(not torch.equal(kept.tensors[k], both.tensors[k]) for k in trained)
    single = erase(pipe, spec, config(regularisation_points=1), progress=False)  # Eq. 8 on 1 point a step, not 4
    assert set(single.tensors) == set(both.tensors)
    assert any(not torch.equal(single.tensors[k], both.tensors[k]) for k in trained)
    with pytest.raises(EraselabError, match="stages must be one of 1, 2, 1,2"):
        erase(pipe, spec, config(stages="3"))
    with pytest.raises(EraselabError, match="trajectory counts"):
        erase(pipe, spec, config(regularisation_points=0))


def test_trajectories_under_a_stateful_scheduler_do_not_depend_on_their_batch(micro_run):
    # Found at SD-1.4 size: PNDM (the scheduler SD-1.4 ships) keeps its last noise predictions between steps, and one
    # scheduler served every batch of trajectories: a second, smaller batch crashed, an equal one started from the
    # first batch's history.
    from diffusers import PNDMScheduler

    from eraselab.erase.trajectories import CHUNK, trajectories

    pipe = load_pipeline(micro_run / "pipeline")
    pipe.scheduler = PNDMScheduler.from_config(pipe.scheduler.config, skip_prk_steps=True)
    prompts, seeds = ["a star"] * (CHUNK + 1), list(range(CHUNK + 1))
    batched = trajectories(pipe, prompts, seeds, steps=6, guidance=3.0, early=4, progress=False).inputs
    for index in (0, CHUNK):  # first of a full batch; alone in the last batch
        alone = trajectories(pipe, prompts[:1], seeds[index:index + 1], 6, 3.0, 4, progress=False).inputs[0]
        assert torch.allclose(batched[index], alone, atol=1e-5)
