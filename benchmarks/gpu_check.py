"""The one prepared GPU check (issue 15): on a machine with a GPU, in about 8 minutes, run

1. `python -m minidit.doctor --device gpu` (versions, GPU matmul rate, a gradient check on it);
2. the gpu-marked tests on CuPy (`pytest -m gpu`);
3. training steps of minidit against PyTorch CUDA eager, TF32 off in both (bench_train.py):
   DiT-S/2 batch 8, DiT-B/2 batch 32 and the teaching model minidit-Tiny/4 batch 64;
4. sampling throughput (bench_sample.py: 250-step guided DDPM of minidit-Tiny/4);
5. the README's main job on the GPU, timed (6,550 flow-matching steps of the latent minidit-Tiny/2 with
   Muon, 1x1 patches, batch 32);

and write every figure to results/performance/gpu_check.json (plus the benchmarks' own JSON
beside it). Each part has its own time limit; one that fails or runs out of time is recorded as
such and the rest still run.

    python benchmarks/gpu_check.py [--out results/performance] [--skip tests,train,...]
    python benchmarks/gpu_check.py --dry-run   # the same plan with tiny sizes, to check the script
                                               # (on the CuPy stand-in: PYTHONPATH=tests/standin;
                                               # each part's time limit doubled)
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("doctor", "tests", "train", "sample", "main_job")


def _run(name, cmd, limit, log):
    """Run one part; returns a record with its command, status, seconds and output tail."""
    t0 = time.perf_counter()
    print(f"[gpu_check] {name}: {' '.join(cmd)}", flush=True)
    try:
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=limit,
                           env=dict(os.environ, MPLBACKEND="Agg"))
        status, out = ("ok" if r.returncode == 0 else f"exit {r.returncode}"), r.stdout + r.stderr
    except subprocess.TimeoutExpired as e:
        status, out = f"over its {limit} s", (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
    seconds = round(time.perf_counter() - t0, 1)
    log.write(f"===== {name} ({status}, {seconds} s)\n{out}\n")
    print(f"[gpu_check] {name}: {status} in {seconds} s", flush=True)
    return {"command": " ".join(cmd), "status": status, "seconds": seconds, "tail": out[-3000:]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "results" / "performance"))
    ap.add_argument("--skip", default="", help=f"comma-separated parts to skip: {', '.join(PARTS)}")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes: check the script, measure nothing")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    skip = {s.strip() for s in a.skip.split(",") if s.strip()}
    py = sys.executable
    dry = a.dry_run
    runs = tempfile.mkdtemp(prefix="gpu_check_")
    plan = {
        "doctor": ([py, "-m", "minidit.doctor", "--device", "gpu"], 120),
        "tests": ([py, "-m", "pytest", "-q", "-m", "gpu", "-x", "-p", "no:cacheprovider"]
                  + (["tests/test_gpu_path.py", "tests/test_fused.py"] if dry else []), 240),
        "train": ([py, "benchmarks/bench_train.py", "--device", "gpu", "--quick", "--json", str(out / "bench_train_gpu.json"),
                   "--configs", "minidit-Tiny/4:8" if dry else "DiT-S/2:8,DiT-B/2:32,minidit-Tiny/4:64"], 240),
        "sample": ([py, "benchmarks/bench_sample.py", "--device", "gpu", "--json", str(out / "bench_sample_gpu.json")]
                   + (["--quick", "--images", "4", "--steps", "3"] if dry else []), 120),
        "main_job": ([py, "-m", "minidit.train", "--vae", "data/vae_shapes32.npz", "--model", "minidit-Tiny/2",
                      "--patch-size", "1", "--steps", "3" if dry else "6550", "--batch-size", "8" if dry else "32",
                      "--lr", "2e-3",
                      "--ema-decay", "0.998", "--lr-schedule", "cosine", "--warmup", "100",
                      "--objective", "flow", "--timesteps", "logit-normal", "--logit-mean", "-0.5", "--optimizer", "muon",
                      "--muon-rms", "0.5", "--device", "gpu",
                      "--no-progress", "--out", str(Path(runs) / "main")]
                     + (["--num-images", "16", "--sample-steps", "2"] if dry else []), 300),
    }
    record = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "dry_run": dry, "parts": {}}
    with open(out / "gpu_check.log", "w") as log:
        for name, (cmd, limit) in plan.items():
            if name in skip:
                continue
            # the dry run goes through the CuPy stand-in (NumPy on the CPU), slower than a GPU
            record["parts"][name] = _run(name, cmd, 2 * limit if dry else limit, log)
    for name in ("bench_train_gpu", "bench_sample_gpu"):
        p = out / f"{name}.json"
        if p.exists():
            record[name] = json.loads(p.read_text())
    path = out / ("gpu_check_dry_run.json" if dry else "gpu_check.json")
    path.write_text(json.dumps(record, indent=1))
    print(f"[gpu_check] wrote {path} and {out / 'gpu_check.log'}")
    return 0 if all(p["status"] == "ok" for p in record["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
