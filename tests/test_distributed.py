"""A run on two processes (``torchrun --nproc_per_node 2``, gloo on this CPU, as ``accelerate`` sets it up): each
process does only its share, the store ends exactly as one process leaves it, and a process killed with SIGKILL
mid-run loses nothing a restart with one process cannot finish to the same result.

(``accelerate launch --num_processes 2 --cpu`` starts ONE process on a CPU-only machine, so these tests launch with
``torchrun``, the launcher ``accelerate`` itself delegates to.)
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from eraselab.distributed import Ranks, process_ranks
from store_counts import committed_images


def _launch(config: Path, out: Path, processes: int, verb: tuple[str, ...] = ("run",),
            node: tuple[int, int] | None = None) -> subprocess.Popen:
    """``torchrun --nproc_per_node PROCESSES -m eraselab VERB CONFIG --out OUT``, one thread a process; with
    ``node`` (rank, port), one of two nodes of one job, both on this machine (torchrun's static rendezvous)."""
    where = ["--standalone"] if node is None else [
        "--nnodes=2", f"--node_rank={node[0]}", "--master_addr=127.0.0.1", f"--master_port={node[1]}"]
    command = [sys.executable, "-m", "torch.distributed.run", *where, f"--nproc_per_node={processes}",
               "-m", "eraselab", *verb, str(config), "--out", str(out)] + (["--json"] if verb == ("run",) else [])
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _two_nodes(config: Path, out: Path) -> list[subprocess.Popen]:
    with socket.socket() as probe:  # a free port for the job's rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return [_launch(config, out, 1, node=(rank, port)) for rank in (0, 1)]


def _summaries(stdouts: list[str]) -> list[dict]:
    found = [json.loads(line) for out in stdouts for line in out.splitlines() if line.startswith("{")]
    return sorted(found, key=lambda s: s["process"])


def _contents(run_dir: Path) -> dict:
    """Everything a run leaves, without the times things were written at: store rows, image files, attack cells."""
    db = sqlite3.connect(run_dir / "store.sqlite")
    try:
        tables = {
            "meta": db.execute("SELECT key, value FROM meta ORDER BY key").fetchall(),
            "requests": db.execute("SELECT key, spec FROM requests ORDER BY key").fetchall(),
            "images": db.execute("SELECT request_key, image_hash FROM images ORDER BY request_key").fetchall(),
            "detections": db.execute("SELECT image_hash, detector, version, settings_hash, result, error "
                                     "FROM detections ORDER BY image_hash, detector").fetchall(),
            "metrics": db.execute("SELECT key, name, inputs, value FROM metrics ORDER BY key").fetchall()}
    finally:
        db.close()
    files = sorted(p.name for p in (run_dir / "images").glob("*/*.png"))
    attacks = {}
    for cell in sorted((run_dir / "attacks").iterdir()):
        if (cell / "refused.json").is_file():
            attacks[cell.name] = json.loads((cell / "refused.json").read_text())["reason"]
        else:
            summary = json.loads((cell / "summary.json").read_text())
            attacks[cell.name] = (summary["pre_attack"], summary["post_attack"], summary["cost"]["unet_evals"])
    return {**tables, "files": files, "attacks": attacks}


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> tuple[Path, dict]:
    """A two-variant grid with two attacks (one refused on the bare model), and what one process makes of it."""
    from eraselab.erase.spec import EraseSpec
    from eraselab.erase.uce import UceConfig
    from eraselab.erase.uce import erase as uce
    from eraselab.models import load_pipeline
    from eraselab.models.tiny.world import load_world
    from eraselab.profile import TINY

    root = tmp_path_factory.mktemp("distributed")
    spec = EraseSpec(("star",), ("shape",), templates=load_world().erase_templates("star"))
    edit = uce(load_pipeline("tiny"), spec, TINY.config(UceConfig)).save(root / "uce-star")
    prompts = root / "stars.csv"
    prompts.write_text("prompt\na red star\na blue star\n")
    config = {"name": "two-processes", "models": ["tiny"], "edits": ["base", str(edit)], "seeds": {"count": 4},
              "sampler": {"steps": 6, "guidance": 5.0}, "detectors": ["tiny"],
              "groups": [{"suite": "tiny:target:star", "metric": "efficacy", "concept": "shape=star"}],
              "attacks": [{"name": "embedding-recovery", "concept": "star", "suite": str(prompts), "seeds": 1},
                          {"name": "concept-vector", "concept": "star", "suite": str(prompts), "seeds": 1,
                           "options": {"strength": 5.0}}]}
    path = root / "experiment.yaml"
    path.write_text(yaml.safe_dump(config))
    _one_process(path, root / "one")
    return path, _contents(root / "one")


def _one_process(config: Path, out: Path) -> None:
    """A plain ``eraselab run`` with one thread, as each launched process has: a pixel of an image can differ
    between thread counts (a convolution sums in another order), so every run compared here uses one."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "eraselab", "run", str(config), "--out", str(out), "--json"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def test_cells_are_split_by_key_alone_into_disjoint_shares():
    keys = [f"{i:064x}" for i in range(0, 4000, 7)] + [f"attack-{i}" for i in range(300)]
    for count in (2, 3):
        owners = [[r for r in range(count) if Ranks(r, count).owns(k)] for k in keys]
        assert all(len(o) == 1 for o in owners)  # every cell has exactly one owner
        shares = [sum(o == [r] for o in owners) for r in range(count)]
        assert min(shares) > 0.8 * len(keys) / count  # and the shares are about even
    assert all(Ranks().owns(k) for k in keys)
    assert process_ranks() == Ranks()  # no launcher: one process, no process group made


@pytest.mark.parametrize("layout", ["one node", "two nodes"])
def test_two_processes_each_do_their_share_and_leave_the_single_process_store(grid, tmp_path, layout):
    config, alone = grid
    out = tmp_path / "two"
    launched = [_launch(config, out, 2)] if layout == "one node" else _two_nodes(config, out)
    finished = [process.communicate(timeout=600) for process in launched]
    for process, (_, stderr) in zip(launched, finished, strict=True):
        assert process.returncode == 0, stderr[-3000:]
    summaries = _summaries([stdout for stdout, _ in finished])
    assert [(s["process"], s["processes"]) for s in summaries] == [(0, 2), (1, 2)]
    keys = [key for key, _ in alone["images"]]
    for summary in summaries:  # each process generated exactly the cells it owns, and judged their images
        ranks = Ranks(summary["process"], 2)
        owned = [key for key, _ in alone["images"] if ranks.owns(key)]
        assert summary["generated"] == len(owned) > 0
        # (an image two cells share may be judged by the other process first: at most, not exactly)
        assert 0 < summary["judged"] <= len({image for key, image in alone["images"] if key in owned})
        attacked = summary["attacks"]["run"] + summary["attacks"]["refused"]
        assert attacked == sum(map(ranks.owns, alone["attacks"]))  # the attack cells it owns (by directory name)
    assert sum(s["generated"] for s in summaries) == len(keys)  # no image made twice: one run's work in all
    assert sum(s["judged"] for s in summaries) >= len({image for _, image in alone["images"]})
    assert sum(s["attacks"]["run"] + s["attacks"]["refused"] for s in summaries) == len(alone["attacks"]) == 4
    assert summaries[0]["metrics"] > 0 and summaries[1]["metrics"] == 0  # the main process writes the metrics
    assert _contents(out) == alone
    assert not (out / "nodes").exists() or not any((out / "nodes").iterdir())  # node stores merged and removed


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the processes in /proc (Linux)")
@pytest.mark.parametrize("layout", ["one node", "two nodes"])
def test_a_process_killed_mid_run_loses_nothing_a_one_process_restart_cannot_finish(grid, tmp_path, layout):
    config, alone = grid
    out = tmp_path / "killed"
    launched = [_launch(config, out, 2)] if layout == "one node" else _two_nodes(config, out)
    victim = _workers(launched[0].pid, 2)[1] if layout == "one node" else _workers(launched[1].pid, 1)[1]
    stored = 0
    while stored < 8 and launched[0].poll() is None:  # wait until some images are committed, then kill rank 1
        time.sleep(0.05)
        stored = committed_images(out)
    assert launched[0].poll() is None, "the run ended before it could be killed: make the grid larger"
    os.kill(victim, signal.SIGKILL)
    for process in launched:
        process.communicate(timeout=120)
        assert process.returncode != 0  # torchrun stops the other process too
    left = committed_images(out)
    assert 0 < left < len(alone["images"])  # killed mid-run
    _one_process(config, out)  # a restart with one process
    assert _contents(out) == alone


def _workers(launcher: int, count: int) -> dict[int, int]:
    """{rank: pid} of the ``count`` processes ``torchrun`` (pid ``launcher``) started, read from /proc."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = {}
        for child in Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split():
            try:
                environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            ranks = [v.split(b"=", 1)[1] for v in environ if v.startswith(b"RANK=")]
            if ranks:
                found[int(ranks[0])] = int(child)
        if len(found) == count:
            return found
        time.sleep(0.05)
    raise AssertionError("torchrun did not start two processes")




def test_a_trained_eraser_on_two_processes_equals_one_process_at_the_same_global_batch(tmp_path):
    """SafeGen, 3 steps of 2 micro-batches: two processes of one micro-batch each (gradients all-reduced) give one
    process's weights with 2-step accumulation, and not those of one micro-batch a step."""
    from safetensors.torch import load_file
    from typer.testing import CliRunner

    from eraselab.cli import app

    def settings(accumulation: int) -> Path:
        path = tmp_path / f"safegen-{accumulation}.yaml"
        path.write_text(yaml.safe_dump({"iterations": 3, "batch_size": 2, "benign_ratio": 1, "clip": 1.0,
                                        "accumulation": accumulation}))
        return path

    erase = ("erase", "--method", "safegen", "--concept", "star", "--config")
    launched = _launch(settings(1), tmp_path / "two", 2, erase)
    _, stderr = launched.communicate(timeout=600)
    assert launched.returncode == 0, stderr[-3000:]
    for accumulation in (2, 1):
        result = CliRunner().invoke(app, [*erase[:-1], "--config", str(settings(accumulation)),
                                          "--out", str(tmp_path / f"one-{accumulation}")])
        assert result.exit_code == 0, result.output
    two, one, single = (load_file(tmp_path / d / "edit.safetensors") for d in ("two", "one-2", "one-1"))
    assert sorted(two) == sorted(one) and all(".attn1." in name for name in two)
    base = dict(_tiny_unet().named_parameters())
    moved = _mean(one[n] - base[n.removeprefix("unet.")].detach() for n in one)
    assert moved > 1e-3  # the three steps did move the weights
    # Equal within float tolerance: the all-reduce sums in another order, and AdamW's g / sqrt(v) turns that into
    # visible steps only where a gradient is about 0 (measured: 0.02% of the weights off by more than 1e-6).
    differs = torch.cat([(two[n] - one[n]).abs().flatten() for n in one])
    assert float(differs.mean()) < 1e-4 * moved and float((differs > 1e-6).float().mean()) < 1e-3
    assert _mean(single[n] - one[n] for n in one) > 0.1 * moved  # and unlike one micro-batch a step
    assert not (tmp_path / "two.checkpoint").exists()  # the main process wrote the edit and cleared its progress


def _mean(differences) -> float:
    return float(torch.cat([d.abs().flatten() for d in differences]).mean())


def _tiny_unet():
    from eraselab.models import load_pipeline

    return load_pipeline("tiny").unet


def test_an_audit_on_two_processes_writes_the_card_of_one(small_audit, tmp_path):
    edit, _, options = small_audit
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    audit = ["-m", "eraselab", "audit", "--edit", str(edit), *options, "--out"]
    one = subprocess.run([sys.executable, *audit, str(tmp_path / "one")], env=env, capture_output=True, text=True,
                         timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          *audit, str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("wrote ") == 1  # the main process writes the card
    cards = [json.loads((tmp_path / d / "card.json").read_text()) for d in ("one", "two")]
    for card in cards:  # the attacks' wall-clock seconds are the one thing two runs do not share
        for attack in [*card["attacks"], card["strongest_attack"]]:
            attack.get("cost", {}).pop("seconds", None)
    assert cards[0] == cards[1]
