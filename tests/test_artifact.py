import shutil

import pytest
import torch

from eraselab.erase.artifact import Edit, apply_edit
from eraselab.errors import EraselabError
from eraselab.models import cross_attention_layers, load_pipeline, pipeline_fingerprint


@pytest.fixture
def pipe(micro_run):
    return load_pipeline(micro_run / "pipeline")


def _edit(pipe) -> Edit:
    layer = cross_attention_layers(pipe.unet)[0]
    name = f"unet.{layer.name}.to_k.weight"
    return Edit({name: layer.to_k.weight.detach() * 0 + 0.25},
                {"method": "test", "base_fingerprint": pipeline_fingerprint(pipe)})


def test_save_load_apply_and_undo(pipe, tmp_path):
    before = pipeline_fingerprint(pipe)
    edit = _edit(pipe)
    edit.save(tmp_path / "edit")
    loaded = Edit.load(tmp_path / "edit")
    assert loaded.manifest["tensors"] == list(edit.tensors) and loaded.manifest["provenance"]["eraselab"]
    handle = apply_edit(pipe, tmp_path / "edit")
    assert pipeline_fingerprint(pipe) != before
    assert torch.all(cross_attention_layers(pipe.unet)[0].to_k.weight == 0.25)
    handle.undo()
    assert pipeline_fingerprint(pipe) == before


def test_plain_diffusers_recipe_gives_the_same_weights(pipe, tmp_path, readme_apply):
    _edit(pipe).save(tmp_path / "edit")
    with apply_edit(pipe, tmp_path / "edit"):
        ours = pipeline_fingerprint(pipe)
    readme_apply(pipe, tmp_path / "edit")
    assert pipeline_fingerprint(pipe) == ours


def test_tampered_or_truncated_files_are_refused(pipe, tmp_path):
    _edit(pipe).save(tmp_path / "edit")
    weights = tmp_path / "edit" / "edit.safetensors"
    shutil.copytree(tmp_path / "edit", tmp_path / "cut")
    (tmp_path / "cut" / "edit.safetensors").write_bytes(weights.read_bytes()[:-16])
    with pytest.raises(EraselabError, match="truncated or tampered"):
        Edit.load(tmp_path / "cut")
    with pytest.raises(EraselabError, match="is not an edit"):
        Edit.load(tmp_path)


def test_wrong_base_unknown_tensor_and_wrong_shape_apply_nothing(pipe, tmp_path):
    before = pipeline_fingerprint(pipe)
    other = _edit(pipe)
    other.manifest["base_fingerprint"] = "0" * 16
    with pytest.raises(EraselabError, match="made for base model"):
        apply_edit(pipe, other)
    good = _edit(pipe)
    name = next(iter(good.tensors))
    bad_key = Edit({**good.tensors, "unet.no.such.weight": torch.zeros(1)}, good.manifest)
    with pytest.raises(EraselabError, match="does not exist"):
        apply_edit(pipe, bad_key)
    bad_shape = Edit({**good.tensors, name.replace("to_k", "to_v"): torch.zeros(3, 3)}, good.manifest)
    with pytest.raises(EraselabError, match="has shape"):
        apply_edit(pipe, bad_shape)
    assert pipeline_fingerprint(pipe) == before  # nothing applied halfway


@pytest.mark.parametrize("change", ["relabel", "strip-fingerprint", "unseal"])
def test_a_manifest_changed_by_hand_is_refused(pipe, tmp_path, change):
    import json

    _edit(pipe).save(tmp_path / "edit")
    path = tmp_path / "edit" / "manifest.json"
    manifest = json.loads(path.read_text())
    assert manifest["seal"] and manifest["format"] == 2
    if change == "relabel":
        manifest["method"] = "esd"
    elif change == "strip-fingerprint":
        del manifest["base_fingerprint"]
    else:
        del manifest["seal"]
    path.write_text(json.dumps(manifest, indent=2))
    with pytest.raises(EraselabError, match="has no seal" if change == "unseal" else "seal does not match"):
        Edit.load(tmp_path / "edit")


def test_an_edit_without_its_base_fingerprint_is_never_applied(pipe):
    edit = _edit(pipe)
    del edit.manifest["base_fingerprint"]
    before = pipeline_fingerprint(pipe)
    with pytest.raises(EraselabError, match="names no base model"):
        apply_edit(pipe, edit)
    assert pipeline_fingerprint(pipe) == before
