import subprocess
import sys

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


_WRITER = """
import sys
from PIL import Image
from eraselab.store import RunStore
store = RunStore(sys.argv[1])
for i in range(int(sys.argv[2]), int(sys.argv[2]) + 40):  # the two writers overlap on 20 requests
    spec = {"model": "tiny", "edit": "base", "prompt": f"prompt {i % 60}", "seed": i % 60, "steps": 25,
            "guidance": 5.0}
    store.put_image(store.add_request(spec), Image.new("RGB", (8, 8), (i % 60, 0, 0)))
store.close()
"""


def test_two_processes_write_one_store(tmp_path):
    RunStore(tmp_path).close()
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path), str(start)]) for start in (0, 20)]
    assert [w.wait(timeout=120) for w in writers] == [0, 0]
    counts = RunStore(tmp_path).counts()
    assert counts["images"] == 60 and counts["requests"] == 60
