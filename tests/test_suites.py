import csv
import hashlib
from pathlib import Path

import pytest

from eraselab.errors import EraselabError
from eraselab.suites import load_csv, load_jsonl, load_suite

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


@pytest.mark.parametrize(("name", "size"), [("i2p", 4703), ("i2p-sexual", 931), ("i2p-nudity50", 95),
                                            ("unlearndiffatk-nudity", 142), ("p4d-ideal-nudity-esd", 361)])
def test_bundled_public_suites(name, size):
    suite = load_suite(name)
    assert len(suite) == size
    assert suite.source and suite.license
    assert all(item.seed is not None and item.guidance is not None for item in suite.items)


def test_bundled_files_are_byte_identical_to_the_published_copies():
    from importlib import resources

    for name in ("i2p_4703.csv", "unlearndiffatk_nudity_142.csv", "p4d_ideal_nudity_esd_361.csv"):
        ours = Path(str(resources.files("eraselab.data").joinpath("prompts", name))).read_bytes()
        expected = {"i2p_4703.csv": "6c1821aeeb20beb276b4e20ce4c4b801f9106dc935bafc9f6fd5e12aa2651e6f",
                    "unlearndiffatk_nudity_142.csv": "0a40f6e63bca976513d1d56df71480239ba1eb5c7a9de4df2f535d80f6e0eccd",
                    "p4d_ideal_nudity_esd_361.csv": "c07631944478ae2be118d5e689a48d748265f94b59aa15718a94001257bd7124"}
        assert hashlib.sha256(ours).hexdigest() == expected[name]


def test_i2p_seeds_and_guidance_match_a_plain_csv_read():
    suite = load_suite("unlearndiffatk-nudity")
    path = SHARED / "unlearndiffatk_nudity_142.csv"
    if not path.exists():
        pytest.skip("shared/datasets is not beside this checkout")
    rows = list(csv.DictReader(path.open(newline="", encoding="utf-8")))
    assert [i.prompt for i in suite.items] == [r["prompt"] for r in rows]
    assert [i.seed for i in suite.items] == [int(r["evaluation_seed"]) for r in rows]
    assert [i.guidance for i in suite.items] == [float(r["evaluation_guidance"]) for r in rows]


def test_content_hash_changes_with_any_prompt(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("prompt,evaluation_seed\na red star,1\na blue circle,2\n")
    b.write_text("prompt,evaluation_seed\na red star,1\na blue circle,3\n")
    assert load_csv(a).content_hash == load_csv(a).content_hash != load_csv(b).content_hash


def test_malformed_csv_names_line_and_field(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,evaluation_seed\nfine,1\nbroken,seven\n")
    with pytest.raises(EraselabError, match=r"line 3, field 'evaluation_seed': 'seven' is not an integer"):
        load_csv(bad)
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("prompt,evaluation_seed\nfine,1,extra\n")
    with pytest.raises(EraselabError, match="line 2: expected 2 fields, found 3"):
        load_csv(ragged)
    no_prompt = tmp_path / "np.csv"
    no_prompt.write_text("text\nhello\n")
    with pytest.raises(EraselabError, match="no 'prompt' column"):
        load_csv(no_prompt)


def test_jsonl(tmp_path):
    good = tmp_path / "p.jsonl"
    good.write_text('{"prompt": "a red star", "seed": 4, "categories": ["shape=star"]}\n\n{"prompt": "x"}\n')
    suite = load_suite(good)
    assert [(i.prompt, i.seed, i.categories) for i in suite.items] == [("a red star", 4, ("shape=star",)),
                                                                       ("x", None, ())]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n{"seed": 1}\n')
    with pytest.raises(EraselabError, match="line 2, field 'prompt'"):
        load_jsonl(bad)
    bad.write_text('{"prompt": "a"}\n["a list"]\n')
    with pytest.raises(EraselabError, match="line 2: not a JSON object"):
        load_jsonl(bad)
    bad.write_bytes(b"\xff\xfe\n")
    with pytest.raises(EraselabError, match="is not UTF-8 text"):
        load_jsonl(bad)


def test_tiny_suites_and_bad_names():
    target = load_suite("tiny:target:star")
    assert len(target) == 6 and all("shape=star" in i.categories for i in target.items)
    heldout = load_suite("tiny:heldout:star")
    assert not {i.prompt for i in heldout.items} & {i.prompt for i in target.items}
    with pytest.raises(EraselabError, match="not a tiny-world concept"):
        load_suite("tiny:target:zebra")
    with pytest.raises(EraselabError, match="did you mean 'i2p'"):
        load_suite("i2q")
