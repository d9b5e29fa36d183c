import multiprocessing

import pytest
from PIL import Image

from eraselab.errors import EraselabError
from eraselab.store import RunStore


def _spec(i: int) -> dict:
    return {"model": "tiny", "edit": "base", "prompt": f"prompt {i}", "seed": i, "steps": 25, "guidance": 5.0}


def test_requests_and_images_are_idempotent(tmp_path):
    store = RunStore(tmp_path)
    key = store.add_request(_spec(0))
    assert store.add_request(dict(reversed(list(_spec(0).items())))) == key  # key order does not matter
    image = Image.new("RGB", (8, 8), (10, 20, 30))
    first = store.put_image(key, image)
    assert store.put_image(key, image) == first
    assert store.counts() == {"requests": 1, "images": 1, "detections": 0, "metrics": 0}
    assert store.load_image(first).getpixel((0, 0)) == (10, 20, 30)


def test_corrupt_or_missing_images_are_reported(tmp_path):
    store = RunStore(tmp_path)
    key = store.add_request(_spec(1))
    image_hash = store.put_image(key, Image.new("RGB", (8, 8), "blue"))
    path = store.image_path(image_hash)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(EraselabError, match="corrupt"):
        store.load_image(image_hash)
    path.unlink()
    with pytest.raises(EraselabError, match="missing"):
        store.load_image(image_hash)


def test_detector_errors_are_stored_as_errors(tmp_path):
    store = RunStore(tmp_path)
    store.put_detection("abc", "tiny", "1", {"threshold": 0.5}, None, error="OSError: truncated file")
    assert store.detection("abc", "tiny", "1", {"threshold": 0.5}) == (None, "OSError: truncated file")
    with pytest.raises(KeyError):
        store.detection("abc", "tiny", "1", {"threshold": 0.6})


def _writer(run_dir: str, start: int) -> None:
    store = RunStore(run_dir)
    for i in range(start, start + 40):
        key = store.add_request(_spec(i % 60))  # the two writers overlap on 20 requests
        store.put_image(key, Image.new("RGB", (8, 8), (i % 60, 0, 0)))
    store.close()


def test_two_processes_write_one_store(tmp_path):
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_writer, args=(str(tmp_path), s)) for s in (0, 20)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
        assert w.exitcode == 0
    assert RunStore(tmp_path).counts()["images"] == 60
