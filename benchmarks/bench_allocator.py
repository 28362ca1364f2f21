"""The training step with glibc's default malloc against `keep_freed_memory` (minidit.backend), which
every minidit command sets before its work: the before/after of that setting.

    python benchmarks/bench_allocator.py [--configs main-job:32,minidit-Tiny/4:32] [--rounds 4]
                                         [--steps 8] [--workers 2] [--json out.json]

The setting is process-wide and cannot be undone, so the two cannot alternate inside one process
as bench_versions.py's versions do: each round runs one child process of each kind, in turns
(default first in even rounds, kept first in odd ones), so a busy machine slows both alike. A
child builds the step (bench_versions.build: forward, loss, backward, AdamW, EMA with the data-
parallel workers), runs two warm-up steps, then times `--steps` steps and counts the page faults
and kernel time they took. The table gives the median step of each kind over all rounds, their
ratio, and the page faults and kernel milliseconds per step.
"""
import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import parse_runs  # noqa: E402

KINDS = ("default", "kept")


def child(kind, name, batch, steps, workers):
    """Time `steps` training steps of `name` in this process; print one JSON line."""
    from bench_versions import build
    from minidit.backend import keep_freed_memory
    applied = keep_freed_memory() if kind == "kept" else False
    step = build("minidit", name, batch, workers)
    step(), step()
    times = []
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps(dict(kind=kind, applied=applied, step_s=times,
                          faults_per_step=(r1.ru_minflt - r0.ru_minflt) / steps,
                          kernel_ms_per_step=1000 * (r1.ru_stime - r0.ru_stime) / steps)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", default="main-job:32,minidit-Tiny/4:32", help="NAME:BATCH,...")
    ap.add_argument("--rounds", type=int, default=4, help="child processes of each kind, in turns")
    ap.add_argument("--steps", type=int, default=8, help="timed steps in each child")
    ap.add_argument("--workers", type=int, default=2, help="data-parallel thread workers")
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.rounds < 1 or a.steps < 1 or a.workers < 1:
        ap.error("--rounds, --steps and --workers must be positive")
    try:
        runs = parse_runs(a.configs)
    except ValueError as e:
        ap.error(str(e))
    if a.child:
        (name, batch), = runs
        return child(a.child, name, batch, a.steps, a.workers)
    print(f"glibc's default malloc against keep_freed_memory; {a.workers} thread worker(s); {a.rounds} "
          f"rounds of one process each, {a.steps} timed steps per process")
    print(f"{'config':<16}{'batch':>6}{'default s':>11}{'kept s':>9}{'kept / default':>16}"
          f"{'faults/step':>18}{'kernel ms/step':>18}")
    rows = []
    for name, batch in runs:
        res = {k: [] for k in KINDS}
        for r in range(a.rounds):
            for kind in (KINDS if r % 2 == 0 else KINDS[::-1]):
                out = subprocess.run([sys.executable, __file__, "--child", kind, "--configs", f"{name}:{batch}",
                                      "--steps", str(a.steps), "--workers", str(a.workers)],
                                     check=True, capture_output=True, text=True, cwd=ROOT).stdout
                res[kind].append(json.loads(out.strip().splitlines()[-1]))
        med = {k: statistics.median(t for c in res[k] for t in c["step_s"]) for k in KINDS}
        faults = {k: statistics.median(c["faults_per_step"] for c in res[k]) for k in KINDS}
        kernel = {k: statistics.median(c["kernel_ms_per_step"] for c in res[k]) for k in KINDS}
        rows.append(dict(config=name, batch=batch, median_step_s=med, ratio=med["kept"] / med["default"],
                         faults_per_step=faults, kernel_ms_per_step=kernel, children=res))
        print(f"{name:<16}{batch:>6}{med['default']:>11.3f}{med['kept']:>9.3f}{med['kept'] / med['default']:>16.3f}"
              f"{faults['default']:>10.0f} -> {faults['kept']:<5.0f}{kernel['default']:>10.1f} -> "
              f"{kernel['kept']:<5.1f}", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(dict(workers=a.workers, rounds=a.rounds, steps=a.steps, rows=rows),
                                           indent=1))
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
