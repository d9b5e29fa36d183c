import pytest

from eraselab.errors import EraselabError
from eraselab.registry import Registry


def test_lazy_targets_import_only_when_used():
    registry: Registry[object] = Registry("detectors")
    registry.register_lazy("json-dumps", "json:dumps")
    assert "json-dumps" in registry
    assert registry.get("json-dumps")([1]) == "[1]"


def test_duplicates_and_bad_targets_are_refused():
    registry: Registry[object] = Registry("methods")
    registry.register("uce")(object())
    with pytest.raises(ValueError, match="twice"):
        registry.register("uce")(object())
    with pytest.raises(ValueError, match="module:attribute"):
        registry.register_lazy("x", "no_colon")


def test_unknown_name_suggests_the_closest():
    registry: Registry[object] = Registry("methods")
    for name in ("uce", "rece", "esd"):
        registry.register(name)(name)
    with pytest.raises(EraselabError, match="did you mean 'rece'"):
        registry.get("recce")
    with pytest.raises(EraselabError, match=r"known: esd, rece, uce"):
        registry.get("zzzzzz")
