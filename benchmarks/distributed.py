"""Throughput of ``eraselab run`` on N processes against one process, and whether the two runs agree.

    python benchmarks/distributed.py [--processes 2] [--seeds 8] [--steps 25] [--device cpu|cuda]

Runs one experiment (the tiny model, bare and UCE-edited, the star suite x seeds) twice in this call: by a plain
``eraselab run`` and by ``torchrun --nproc_per_node N -m eraselab run``, each process with one CPU thread on a CPU
(the point there is correctness, not speed on 2 cores) or one GPU each with ``--device cuda``. Prints images per
second of each, their ratio, and whether the two stores hold the same images, verdicts and metrics.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def _run(command: list[str], threads: int) -> float:
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - start


def _rows(run_dir: Path) -> tuple:
    db = sqlite3.connect(run_dir / "store.sqlite")
    try:
        return tuple(db.execute(query).fetchall() for query in (
            "SELECT request_key, image_hash FROM images ORDER BY 1",
            "SELECT image_hash, detector, result FROM detections ORDER BY 1, 2",
            "SELECT key, value FROM metrics ORDER BY 1"))
    finally:
        db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--device", default="cpu", help="cpu (one thread a process) or cuda (one GPU a process)")
    args = parser.parse_args()
    threads = 1 if args.device == "cpu" else int(os.environ.get("OMP_NUM_THREADS", "4"))
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        eraselab = [sys.executable, "-m", "eraselab"]
        _run([*eraselab, "erase", "--method", "uce", "--concept", "star", "--anchor", "shape", "--out",
              str(root / "uce-star")], threads)
        config = {"name": "distributed-benchmark", "models": ["tiny"], "edits": ["base", str(root / "uce-star")],
                  "seeds": {"count": args.seeds}, "sampler": {"steps": args.steps, "guidance": 5.0},
                  "detectors": ["tiny"], "device": args.device,
                  "groups": [{"suite": "tiny:target:star", "metric": "efficacy", "concept": "shape=star"}]}
        experiment = root / "experiment.yaml"
        experiment.write_text(yaml.safe_dump(config))
        one = _run([*eraselab, "run", str(experiment), "--out", str(root / "one"), "--json"], threads)
        many = _run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                     f"--nproc_per_node={args.processes}", "-m", "eraselab", "run", str(experiment), "--out",
                     str(root / "many"), "--json"], threads)
        images = len(_rows(root / "one")[0])
        same = _rows(root / "one") == _rows(root / "many")
    print(f"{images} images, {args.steps} steps, device {args.device}, {threads} thread(s) a process "
          "(wall time including start-up, judging and metrics)")
    print(f"1 process:  {one:7.1f} s  {images / one:6.2f} images/s")
    print(f"{args.processes} processes: {many:7.1f} s  {images / many:6.2f} images/s")
    print(f"ratio {args.processes} / 1: {one / many:.2f}; stores identical: {same}")


if __name__ == "__main__":
    main()
