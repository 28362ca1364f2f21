"""The README's main command, two versions of minidit timed against each other: whole commands in
child processes that alternate (base, new, base, new, ...), so a busy machine slows both alike.

    python benchmarks/bench_command.py --base REV [--steps 300] [--rounds 3] [--base-steps 4650]
                                       [--new-args "--worker-kind processes"] [--json out.json]

bench_versions.py times one training step in one process; this times what a user runs, start-up,
encoding, data, EMA and logging included, as processes with their own memory settings (a version
from before 2026-12-06 runs with glibc's default malloc, as it did). The base is any git revision:
its whole tree is exported with `git archive` into a temporary folder and the command runs there;
the new version is this checkout. Every run writes into a temporary folder that is removed at the
end; nothing is written into either tree.

Per run it reports the wall time, the steady time per step (the median over the training log's
records after the first, which holds the encoding) and the fixed cost (wall - steps x per step).
From the medians it prints the ratio new / base of the time per step and, given `--base-steps`,
the step count at which the new version's command takes the time the base's took at that count.
`--new-args` adds training arguments to the new version's command only: with `--base HEAD`, the same
code with and without an option (the two kinds of worker, say).
"""
import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_versions import git_export  # noqa: E402
from main_job_search import RECIPES, matmul_rate  # noqa: E402

MAIN = "latent-p1-flow-ln-m-0.5"  # the README's main command (its arguments, less --steps and --out)


def run_once(tree, steps, out, extra=()):
    """Run the main command in `tree` for `steps` steps into `out`, with the training arguments `extra`
    added: (wall s, steady s per step)."""
    cmd = [sys.executable, "-m", "minidit.train", *RECIPES[MAIN], "--steps", str(steps), "--out", str(out),
           "--no-progress", "--log-every", "50", "--ckpt-every", str(steps), *extra]
    t = time.perf_counter()
    subprocess.run(cmd, cwd=tree, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    recs = [json.loads(line) for line in (Path(out) / "log.jsonl").read_text().splitlines() if line.strip()]
    rates = [r["steps_per_sec"] for r in recs if "steps_per_sec" in r][1:]
    if not rates:
        raise SystemExit(f"--steps {steps}: too few to time; the log needs two records of 50 steps")
    return wall, 1.0 / statistics.median(rates)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="git revision to compare this checkout against")
    ap.add_argument("--steps", type=int, default=300, help="training steps of each run (at least 100)")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each version, alternating")
    ap.add_argument("--base-steps", type=int, default=4650,
                    help="the base's step count whose time the new version should match")
    ap.add_argument("--new-args", default="", help="training arguments added to the new version's command only")
    ap.add_argument("--json", type=Path, help="write the runs and the summary here")
    args = ap.parse_args(argv)
    if args.steps < 100 or args.rounds < 1:
        ap.error("--steps must be at least 100 and --rounds at least 1")
    if args.json and not args.json.parent.is_dir():
        ap.error(f"--json {args.json}: no folder {args.json.parent}")
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{args.base}^{{commit}}"],
                      capture_output=True).returncode:
        ap.error(f"--base {args.base!r}: no such revision in {ROOT}")
    gflops = matmul_rate()
    runs = {"base": [], "new": []}
    with tempfile.TemporaryDirectory(prefix="minidit-bench-command-") as tmp:
        base_tree = Path(tmp) / "base"
        base_tree.mkdir()
        git_export(args.base, base_tree)
        for r in range(args.rounds):
            for name, tree, extra in (("base", base_tree, ()), ("new", ROOT, shlex.split(args.new_args))):
                wall, per_step = run_once(tree, args.steps, Path(tmp) / f"run-{name}-{r}", extra)
                runs[name].append({"wall_s": wall, "per_step_s": per_step,
                                   "fixed_s": wall - args.steps * per_step})
                print(f"round {r + 1} {name:4s}: wall {wall:6.1f} s, {per_step * 1e3:6.1f} ms a step, "
                      f"fixed {wall - args.steps * per_step:5.1f} s", flush=True)
    med = {k: {f: statistics.median(x[f] for x in v) for f in ("wall_s", "per_step_s", "fixed_s")}
           for k, v in runs.items()}
    ratio = med["new"]["per_step_s"] / med["base"]["per_step_s"]
    base_time = med["base"]["fixed_s"] + args.base_steps * med["base"]["per_step_s"]
    equal = (base_time - med["new"]["fixed_s"]) / med["new"]["per_step_s"]
    print(f"median a step: base {med['base']['per_step_s'] * 1e3:.1f} ms, new {med['new']['per_step_s'] * 1e3:.1f} ms"
          f" -> new / base {ratio:.3f}; fixed cost base {med['base']['fixed_s']:.1f} s, new "
          f"{med['new']['fixed_s']:.1f} s")
    print(f"the base's {args.base_steps} steps take the new version's time of {equal:.0f} steps "
          f"(matmul {gflops:.1f} GFLOP/s)")
    if args.json:
        args.json.write_text(json.dumps({"base": args.base, "new_args": args.new_args, "steps": args.steps,
                                         "rounds": args.rounds, "matmul_gflops": gflops, "runs": runs, "median": med, "ratio": ratio,
                                         "base_steps": args.base_steps, "equal_time_steps": equal,
                                         "date": time.strftime("%Y-%m-%d %H:%M")}, indent=1) + "\n")


if __name__ == "__main__":
    main()
