from transformers import CLIPTokenizer

from eraselab.models.tiny.tokenizer import _bpe, build_bpe, write_tokenizer
from eraselab.models.tiny.world import load_world


def test_every_world_word_is_one_clip_token(tmp_path):
    world = load_world()
    write_tokenizer(tmp_path, world.vocabulary, max_length=24)
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path)
    for word in world.vocabulary:
        assert tokenizer.tokenize(word) == [f"{word}</w>"], word
    ids = tokenizer("a crimson five-pointed shape", padding="max_length", max_length=24).input_ids
    assert len(ids) == 24 and ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # Stable Diffusion 1.x convention


def test_bpe_reference_matches_the_library_on_unknown_words(tmp_path):
    words = ["star", "start", "tar", "art"]
    _, merges = build_bpe(words)
    write_tokenizer(tmp_path, words, max_length=8)
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path)
    ranks = {pair: i for i, pair in enumerate(merges)}
    for word in [*words, "rats", "tarts", "stars"]:
        assert tokenizer.tokenize(word) == _bpe(word, ranks), word
