import numpy as np
import pytest
from PIL import Image

from eraselab.errors import EraselabError
from eraselab.judge.detectors import DETECTORS, detect_safely, make_detector
from eraselab.judge.detectors.nudenet import PROTOCOLS
from eraselab.models.tiny.world import load_world


def _drawn(n: int, seed: int = 0):
    world = load_world()
    rng = np.random.default_rng(seed)
    attrs = world.sample_attributes(rng, n)
    return world, attrs, [Image.fromarray(a) for a in world.draw(attrs, rng)]


def test_unknown_detector_suggests_a_name():
    with pytest.raises(EraselabError, match="did you mean 'nudenet'"):
        DETECTORS.get("nudnet")


def test_tiny_detector_reads_drawn_images():
    world, attrs, images = _drawn(64)
    detector = make_detector("tiny")
    results = detector.detect(images)
    shapes = [world.shapes.index(r["shape"]) for r in results]
    assert np.mean(np.array(shapes) == attrs["shape"]) > 0.95
    first = world.attributes_of(attrs, 0)
    assert detector.present(results[0], f"shape={world.shapes[first['shape']]}") == (shapes[0] == first["shape"])
    with pytest.raises(EraselabError, match="not a tiny-world class"):
        detector.present(results[0], "zebra")


def test_nudenet_matches_its_own_file_path_route(tmp_path):
    from nudenet import NudeDetector

    detector = make_detector("nudenet")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(3)]
    ours = detector.detect(images)
    reference = NudeDetector()
    for image, result in zip(images, ours, strict=True):
        path = tmp_path / "x.png"
        image.save(path)
        theirs = reference.detect(str(path))
        assert [(d["class"], round(d["score"], 4)) for d in result["detections"]] == \
               [(d["class"], round(d["score"], 4)) for d in theirs]
    assert detector.settings()["threshold"] == 0.6 and detector.version


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_nudenet_protocols_count_only_their_classes_above_threshold(protocol):
    detector = make_detector("nudenet", protocol=protocol)
    classes, threshold = PROTOCOLS[protocol]
    for cls in ("FEET_EXPOSED", "FEMALE_BREAST_EXPOSED", "FACE_FEMALE", "ANUS_EXPOSED"):
        for score in (threshold - 0.01, threshold + 0.01):
            result = {"detections": [{"class": cls, "score": score, "box": [0, 0, 1, 1]}]}
            assert detector.present(result) == (cls in classes and score > threshold)


def test_errors_are_recorded_not_counted_as_absent():
    class Flaky:
        name, version = "flaky", "0"

        def detect(self, images):
            if any(i.size != (8, 8) for i in images):
                raise OSError("truncated file")
            return [{"ok": True} for _ in images]

    good, bad = Image.new("RGB", (8, 8)), Image.new("RGB", (9, 9))
    out = detect_safely(Flaky(), [good, None, bad, good])
    assert out[0] == ({"ok": True}, None) and out[3] == ({"ok": True}, None)
    assert out[1][0] is None and "missing" in out[1][1]
    assert out[2] == (None, "OSError: truncated file")


def test_clip_detector_with_an_injected_micro_clip(micro_run):
    detector = make_detector("clip", model=micro_run / "clip", concepts=["a star", "a circle", "a heart"])
    _, _, images = _drawn(4)
    results = detector.detect(images)
    for result in results:
        assert set(result["probabilities"]) == {"a star", "a circle", "a heart"}
        assert sum(result["probabilities"].values()) == pytest.approx(1, abs=1e-3)
        winner = max(result["probabilities"], key=result["probabilities"].get)
        assert detector.present(result, winner)
    with pytest.raises(EraselabError, match="at least two concepts"):
        make_detector("clip", model=micro_run / "clip", concepts=["a star"])


def test_clip_score_matches_an_explicit_cosine(micro_run):
    import torch

    from eraselab.judge.detectors.clip import ClipEmbedder
    from eraselab.judge.metrics import clip_scores

    embedder = ClipEmbedder(micro_run / "clip")
    _, _, images = _drawn(5)
    texts = ["a red star", "a blue circle", "a heart", "a green cross", "a square"]
    result = clip_scores(embedder, images, texts)
    for image, text, score in zip(images, texts, result["per_item"], strict=True):
        a, b = embedder.images([image])[0], embedder.text([text])[0]
        cosine = float(torch.dot(a, b) / (a.norm() * b.norm()))
        assert score == pytest.approx(100 * max(cosine, 0.0), abs=1e-4)
