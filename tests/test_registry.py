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


# -- one way from a user's options to a config or an object: eraselab.options ------------------------------------
def test_every_kind_of_part_checks_options_the_same_way():
    from eraselab.attack import ATTACKS
    from eraselab.erase.registry import ERASERS
    from eraselab.guard import make_guard
    from eraselab.judge.detectors import make_detector
    from eraselab.options import build
    from eraselab.profile import STABLE_DIFFUSION, TINY

    # names: a did-you-mean and the list, for methods, attacks, guards and detectors alike
    with pytest.raises(EraselabError, match=r"the uce erasure method has no option 'lamd'; did you mean 'lamb'\?"):
        build(ERASERS, "uce", {"lamd": 1.0})
    with pytest.raises(EraselabError, match=r"the p4d attack has no option 'iteration'; did you mean 'iterations'\?"):
        build(ATTACKS, "p4d", {"iteration": 3})
    with pytest.raises(EraselabError, match=r"the sld guard has no option 'presett'; did you mean 'preset'\?"):
        make_guard("sld", concept="star", presett="max")
    with pytest.raises(EraselabError, match=r"the nudenet detector has no option 'protocl'; did you mean 'protocol'"):
        make_detector("nudenet", protocl="exposed8-0.6")
    # types: the option's types named; ints pass where floats go, bools do not pass for ints, lists become tuples
    with pytest.raises(EraselabError, match=r"the rece erasure method option 'rounds': expected int, got 'three'"):
        build(ERASERS, "rece", {"rounds": "three"})
    with pytest.raises(EraselabError, match=r"option 'iterations': expected int, got True"):
        build(ATTACKS, "unlearndiff", {"iterations": True})
    with pytest.raises(EraselabError, match=r"the nudenet detector option 'batch_size': expected int, got 'x'"):
        make_detector("nudenet", batch_size="x")
    with pytest.raises(EraselabError, match=r"the safree guard option 'alpha': expected float, got 'high'"):
        make_guard("safree", alpha="high")
    assert build(ERASERS, "uce", {"lamb": 1}).lamb == 1
    assert build(ERASERS, "trce", {"stages": 2}).stages == "2"  # YAML's `stages: 2` is a number
    with pytest.raises(EraselabError, match=r"the trce erasure method option 'stages': expected str, got 2.5"):
        build(ERASERS, "trce", {"stages": 2.5})
    with pytest.raises(EraselabError, match=r"trce stages must be one of"):
        build(ERASERS, "trce", {"stages": 3}).check()
    assert build(ATTACKS, "p4d", {"oracle_seeds": [5, 6]}).oracle_seeds == (5, 6)
    for concepts in (["star"], "star"):  # SAFREE takes one phrase or a list of them
        assert make_guard("safree", concepts=concepts).concepts == ("star",)
    # the profile: the paper's defaults on Stable Diffusion, the tiny ones on tiny, the user's over both
    assert build(ATTACKS, "p4d", profile=STABLE_DIFFUSION).iterations == 3000
    assert build(ATTACKS, "p4d", profile=TINY).iterations == 200
    assert build(ATTACKS, "p4d", {"iterations": 7}, TINY).iterations == 7
