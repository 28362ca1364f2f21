"""Training-step time of two versions of minidit, in one process, interleaved: the before/after
measurement for a change that is meant to make minidit faster.

    python benchmarks/bench_versions.py --base HEAD~1 [--configs DiT-S/2:8,minidit-Tiny/4:32,main-job:32]
                                        [--repeats 7] [--workers 2] [--json out.json]

The base is any git revision: its `minidit/` package is exported with `git archive` into a
temporary folder and imported under the name `minidit_base`, next to the working tree's
`minidit`. A config is a model name on 32x32x3 images (the paper's loss) or `main-job`, the
README main command's latent flow model. Both build the same model from the same seed; their
training steps (train_step: forward, loss, backward, AdamW, EMA) then alternate, so a busy or
noisy machine slows both alike, and the table reports the median of each and new / base.
Both run with malloc keeping freed memory (minidit.backend.keep_freed_memory, as minidit's commands
do since 2026-12-06; benchmarks/bench_allocator.py measures that setting itself).
"""
import argparse
import importlib
import importlib.util
import json
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import parse_runs  # noqa: E402


def git_export(rev, into, *paths):
    """Write revision `rev`'s files (its whole tree, or only `paths`) into the folder `into`."""
    try:
        tar = subprocess.run(["git", "-C", str(ROOT), "archive", rev, *paths],
                             check=True, capture_output=True).stdout
    except subprocess.CalledProcessError as e:
        raise SystemExit(f"--base {rev!r}: git archive failed: {e.stderr.decode().strip()}")
    with tarfile.open(fileobj=BytesIO(tar)) as t:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 and 3.12: refuse odd members
            t.extractall(into, filter="data")
        else:
            t.extractall(into)


def export_base(rev, into):
    """Write revision `rev`'s minidit package to into/minidit_base, imports renamed to match."""
    git_export(rev, into, "minidit")
    pkg = Path(into) / "minidit_base"
    (Path(into) / "minidit").rename(pkg)
    for f in pkg.rglob("*.py"):  # absolute imports of the package must point at the copy
        f.write_text(re.sub(r"\b(from|import) minidit\b", r"\1 minidit_base", f.read_text()))
    sys.path.insert(0, str(into))


def build(pkg, name, batch, workers):
    """A no-argument training step of config `name` at batch `batch`, built with package `pkg`."""
    # today's layout (minidit/commands/train.py), the one of issue 13 (minidit/training/train.py), or
    # the flat one of older revisions
    where = {"backend": "backend", "model": "model", "diffusion": "diffusion", "optim": "training.optim",
             "parallel": "training.parallel", "train": "commands.train"}
    if importlib.util.find_spec(f"{pkg}.commands") is None:
        where.update(train="training.train")
    if importlib.util.find_spec(f"{pkg}.training") is None:
        where.update(optim="optim", parallel="parallel", train="train")
    mod = {m: importlib.import_module(f"{pkg}.{path}") for m, path in where.items()}
    if name == "main-job":
        # the README main command's model and objective: minidit-Tiny/2 with 1x1 patches on 8x8x4
        # latents, flow matching with logit-normal times (a batch of random numbers of that shape)
        cfg = mod["model"].get_config("minidit-Tiny/2", input_size=8, in_channels=4, num_classes=10,
                                      patch_size=1, learn_sigma=False)
        objectives = importlib.import_module(f"{pkg}.diffusion.objectives")
        diffusion = objectives.make_objective("flow", False, "logit-normal", -0.5, 1.0)
    else:
        small = {} if name.startswith("DiT-") else dict(in_channels=3, num_classes=10)
        cfg = mod["model"].get_config(name, input_size=32, **small)
        diffusion = mod["diffusion"].create_diffusion("")
    params = mod["model"].init_params(cfg, seed=0)
    rng = mod["backend"].Generator(0)
    x = rng.normal((batch, cfg.in_channels, cfg.input_size, cfg.input_size))
    y = rng.integers(0, cfg.num_classes, (batch,))
    ema, opt = mod["optim"].init_ema(params), mod["optim"].AdamW(params, lr=1e-4)
    parallel = mod["parallel"].DataParallel(workers).__enter__()  # kept for the whole process
    return lambda: mod["train"].train_step(params, ema, opt, cfg, diffusion, x, y, rng, 0.9999, parallel)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="git revision to compare against (e.g. HEAD~1, main)")
    ap.add_argument("--configs", default="DiT-S/2:8,minidit-Tiny/4:32", help="NAME:BATCH,...")
    ap.add_argument("--repeats", type=int, default=7, help="timed steps of each version (median)")
    ap.add_argument("--workers", type=int, default=2, help="data-parallel workers of both versions")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    if a.repeats < 1 or a.workers < 1:
        ap.error("--repeats and --workers must be positive")
    try:
        runs = parse_runs(a.configs)
    except ValueError as e:
        ap.error(str(e))
    from minidit.backend import keep_freed_memory
    keep_freed_memory()
    tmp = tempfile.TemporaryDirectory()
    export_base(a.base, tmp.name)
    print(f"base {a.base} against the working tree; {a.workers} worker(s); median of {a.repeats} "
          f"interleaved training steps after one warm-up step each")
    print(f"{'config':<16}{'batch':>6}{'base s':>10}{'new s':>10}{'new / base':>12}")
    rows = []
    for name, batch in runs:
        steps = {"base": build("minidit_base", name, batch, a.workers),
                 "new": build("minidit", name, batch, a.workers)}
        times = {k: [] for k in steps}
        for fn in steps.values():
            fn()
        for _ in range(a.repeats):
            for k, fn in steps.items():
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
        base, new = statistics.median(times["base"]), statistics.median(times["new"])
        rows.append(dict(config=name, batch=batch, base_s=base, new_s=new, ratio=new / base,
                         base_samples_s=times["base"], new_samples_s=times["new"]))
        print(f"{name:<16}{batch:>6}{base:>10.3f}{new:>10.3f}{new / base:>12.3f}", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(dict(base=a.base, workers=a.workers, repeats=a.repeats,
                                                rows=rows), indent=1))
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
