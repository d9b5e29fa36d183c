import numpy as np
import pytest
import torch

from eraselab.batching import Batching
from eraselab.errors import EraselabError
from eraselab.generate import generate_images
from eraselab.models import load_pipeline
from eraselab.models.vocabulary import unknown_words
from eraselab.requests import GenerationRequest


@pytest.fixture(scope="module")
def tiny():
    return load_pipeline("tiny")


def _requests(steps=3):
    prompts = ["a red star", "a blue circle on a dark background", "", "a pentagram"]
    return [GenerationRequest(p, seed=s, steps=steps) for p in prompts for s in (0, 1, 2)]


def _arrays(images):
    return [np.asarray(i).astype(np.int16) for i in images]


@pytest.fixture(params=[1, 3, None], ids=["1-thread", "3-threads", "default-threads"])
def threads(request):
    """Kernels are chosen by shape and thread count, and tensors split between threads by both: on AMD EPYC, calls
    of 4 and 12 requests differed at 1 thread, and one request's rows in calls of one shape at 3 threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param or before)
    yield
    torch.set_num_threads(before)


def test_same_request_same_image_whatever_the_other_requests_or_their_order(tiny, threads):
    # The guarantee (eraselab.batching.Batching): bit-identical for the same batch size on any machine.
    batching = Batching(size=4)
    requests = _requests()
    reference = _arrays(generate_images(tiny, requests, batching, progress=False))
    alone = [generate_images(tiny, [r], batching, progress=False)[0] for r in requests[:2]]
    assert all(np.array_equal(a, b) for a, b in zip(reference[:2], _arrays(alone), strict=True))
    split = (generate_images(tiny, requests[:5], batching, progress=False)
             + generate_images(tiny, requests[5:], batching, progress=False))
    order = np.random.default_rng(0).permutation(len(requests))
    shuffled = generate_images(tiny, [requests[i] for i in order], batching, progress=False)
    unshuffled = [image for _, image in sorted(zip(order, shuffled, strict=True), key=lambda pair: pair[0])]
    for got in (split, unshuffled):
        assert all(np.array_equal(a, b) for a, b in zip(reference, _arrays(got), strict=True))


def test_other_batch_sizes_agree_within_one_level_of_255(tiny):
    # Calls of other shapes may take other kernels: the stated tolerance is one level in 255 at 3 steps.
    requests = _requests()
    reference = _arrays(generate_images(tiny, requests, Batching(size=4), progress=False))
    for batching in (Batching(size=1), Batching(size=5), Batching(size=8), Batching(size=5, fixed_shape=False)):
        got = _arrays(generate_images(tiny, requests, batching, progress=False))
        assert max(np.abs(a - b).max() for a, b in zip(reference, got, strict=True)) <= 1, batching


def test_padded_calls_have_one_shape_and_unpadded_calls_run_only_the_requests(tiny):
    rows: list[int] = []
    hook = tiny.unet.register_forward_hook(lambda module, args, output: rows.append(len(args[0])))
    try:
        requests = [GenerationRequest("a red star", seed=s, steps=2) for s in (3, 4, 5)]
        generate_images(tiny, requests[:1], Batching(size=8, fixed_shape=False), progress=False)
        assert set(rows) == {2}  # one request, its two guidance rows: as plain diffusers
        rows.clear()
        generate_images(tiny, requests, Batching(size=8), progress=False)
        assert set(rows) == {16}  # 8 rows x 2 whatever the number of requests
    finally:
        hook.remove()
    assert list(Batching(size=4).calls([1, 1, 3])) == [[None, 0, None, 2], [None, 1, None, None]]
    with pytest.raises(EraselabError, match="batch size"):
        Batching(size=0)


def test_the_default_policy_pads_small_models_on_the_cpu_only(tiny):
    from types import SimpleNamespace

    from diffusers import UNet2DConditionModel

    assert Batching().resolved(tiny) == Batching(8, fixed_shape=True)
    assert Batching(4, fixed_shape=False).resolved(tiny) == Batching(4, fixed_shape=False)  # an explicit choice stays
    with torch.device("meta"):  # SD-1.4's UNet (860 M parameters), built without memory
        sd14 = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8, sample_size=64)
    assert sum(p.numel() for p in sd14.parameters()) > 800_000_000
    large_on_cpu = SimpleNamespace(unet=sd14, device=torch.device("cpu"))
    small_on_gpu = SimpleNamespace(unet=tiny.unet, device=torch.device("cuda"))
    assert Batching().resolved(large_on_cpu).fixed_shape is False
    assert Batching().resolved(small_on_gpu).fixed_shape is False
    assert Batching(fixed_shape=True).resolved(large_on_cpu).fixed_shape is True


def test_seed_and_prompt_change_the_image(tiny):
    a, b, c = generate_images(tiny, [GenerationRequest("a red star", 0, 3), GenerationRequest("a red star", 1, 3),
                                     GenerationRequest("a blue heart", 0, 3)], progress=False)
    assert not np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_prompt_embeds_replay_the_prompt(tiny):
    embeds, _ = tiny.encode_prompt(["a green heart"], "cpu", 1, False)
    by_text, by_embeds = generate_images(tiny, [GenerationRequest("a green heart", 4, 3),
                                                GenerationRequest("(embeds)", 4, 3, prompt_embeds=embeds)],
                                         progress=False)
    assert np.array_equal(np.asarray(by_text), np.asarray(by_embeds))


def test_unknown_words_are_named(tiny):
    assert unknown_words(tiny, ["a zebra star", "a Crimson five-pointed shape"]) == ["zebra"]
    assert unknown_words(tiny, ["a 5 star"]) == ["5"]  # digits are words to CLIP's pre-tokeniser too
    with pytest.raises(EraselabError, match="zebra"):
        generate_images(tiny, [GenerationRequest("a zebra", 0, 2)], progress=False)


def test_empty_request_list_is_refused(tiny):
    with pytest.raises(EraselabError, match="nothing to generate"):
        generate_images(tiny, [], progress=False)
