import numpy as np
import pytest

from eraselab.errors import EraselabError
from eraselab.generate import GenerationRequest, generate_images, unknown_words
from eraselab.models import load_pipeline


@pytest.fixture(scope="module")
def tiny():
    return load_pipeline("tiny")


def _requests(steps=3):
    prompts = ["a red star", "a blue circle on a dark background", "", "a pentagram"]
    return [GenerationRequest(p, seed=s, steps=steps) for p in prompts for s in (0, 1, 2)]


def test_same_request_same_image_whatever_the_batch_size_or_order(tiny):
    requests = _requests()
    reference = [np.asarray(i) for i in generate_images(tiny, requests, batch_size=len(requests), progress=False)]
    for batch_size in (1, 5, 7):
        got = generate_images(tiny, requests, batch_size=batch_size, progress=False)
        assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(reference, got, strict=True)), batch_size
    shuffled = [requests[i] for i in np.random.default_rng(0).permutation(len(requests))]
    got = dict(zip(shuffled, generate_images(tiny, shuffled, batch_size=4, progress=False), strict=True))
    assert all(np.array_equal(reference[i], np.asarray(got[r])) for i, r in enumerate(requests))


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
