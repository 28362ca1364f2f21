"""Training speed with MPI ranks against worker threads, on this machine (issue 19):

    python benchmarks/bench_ranks.py [--steps 150] [--json results/performance/bench_ranks.json]

Runs the README's main-job model (minidit-Tiny/4, batch 32) as 1 process x 1 thread, 1 process x
2 threads, and `mpirun -n K` x 1 thread for K = 1, 2 (more with --ranks), interleaved twice, and
reports the steady steps per second of each (the training log's records after the first, so that
start-up is not counted). Needs the [mpi] extra for the rank rows.
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL = ["--model", "minidit-Tiny/4", "--batch-size", "32", "--lr", "2e-3", "--no-progress", "--log-every", "25",
         "--sample-steps", "2"]


def matmul_rate(n=2048):
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def steady_rate(cmd, out):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run(cmd + ["--out", str(out), "--overwrite"], cwd=ROOT, env=env, check=True, capture_output=True)
    recs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()][1:]
    return len(recs) / sum(1 / r["steps_per_sec"] for r in recs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--ranks", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    mpirun = shutil.which("mpirun", path=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
    train = [sys.executable, "-m", "minidit.train", *MODEL, "--steps", str(a.steps)]
    configs = {"1 process x 1 thread": train + ["--workers", "1"],
               "1 process x 2 threads": train + ["--workers", "2"]}
    if mpirun:
        for k in a.ranks:
            configs[f"{k} MPI rank{'s' if k > 1 else ''} x 1 thread"] = [mpirun, "-n", str(k)] + train + ["--workers", "1"]
    rates = {name: [] for name in configs}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(2):
            for name, cmd in configs.items():
                rates[name].append(steady_rate(cmd, Path(tmp) / "run"))
    rec = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
           "matmul_gflops": matmul_rate(), "steps": a.steps, "model": "minidit-Tiny/4, batch 32",
           "steps_per_sec": {n: max(v) for n, v in rates.items()}, "all": rates,
           "date": time.strftime("%Y-%m-%d %H:%M")}
    print(f"{rec['machine']}, {rec['cpus']} CPUs, float32 matmul {rec['matmul_gflops']:.0f} GFLOP/s; "
          f"minidit-Tiny/4 batch 32, steady steps per second (best of 2):")
    base = rec["steps_per_sec"]["1 process x 1 thread"]
    for n, v in rec["steps_per_sec"].items():
        print(f"  {n:28s} {v:6.2f}  ({v / base:.2f}x)")
    if not mpirun:
        print("  (no mpirun: install the [mpi] extra for the rank rows)")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(rec, indent=1))


if __name__ == "__main__":
    main()
