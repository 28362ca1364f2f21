"""Training steps per second of the main job's model on this machine's CPUs with 1 worker, W
threads and W processes (`--workers W --worker-kind threads|processes`, issue 27), and the same
training step in PyTorch eager on the same cores:

    python benchmarks/bench_workers.py [--steps 20] [--rounds 3] [--workers 2] [--json out.json]
    python benchmarks/bench_workers.py --pixels --model minidit-Tiny/4 --patch-size 4   # Tiny/4 on 32x32 images

The model is the README main command's: minidit-Tiny/2 with 1x1 patches on the latents of
data/vae_shapes32.npz, batch 32 (a batch of random numbers of the latent shape: the speed does
not depend on the values). Every variant runs minidit's train_step (train.py: forward, hybrid
loss, backward, AdamW, EMA); the PyTorch one is torch_dit.py's equivalent step with torch's
threads set to the CPUs. The variants take turns, `--rounds` times `--steps` steps each after a
warm-up, so a busy machine slows them alike; the table reports the median rate of each, its
ratio to one worker, and the step time against PyTorch's (lower is better).

The process workers are forked first (before torch starts any thread) and wait between their
rounds; each of the W processes then uses CPUs / W BLAS threads, as `--worker-kind processes` does.
Like minidit's commands, the script first makes malloc keep freed memory (minidit.backend.
keep_freed_memory); PyTorch, in the same process, runs with that setting too. `--default-malloc`
leaves glibc's malloc as it is, for both.
"""
import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_matmul import matmul_rate  # noqa: E402


def machine_name():
    """The CPU's model name as lscpu gives it (else /proc/cpuinfo, else what Python knows)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main_job_config(args):
    """The DiTConfig to time: the main job's latent model, or a pixel-space one with --pixels."""
    from minidit.model import get_config
    from minidit.training.shapes import CLASS_NAMES
    overrides = dict(num_classes=len(CLASS_NAMES))
    if args.patch_size:
        overrides["patch_size"] = args.patch_size
    if args.pixels:
        return get_config(args.model, input_size=32, in_channels=3, **overrides), "32x32x3 images"
    from minidit.latent.autoencoder import load_vae_encoder
    enc = load_vae_encoder(str(ROOT / "data" / "vae_shapes32.npz"), device="cpu")
    size = enc.latent_size(32)
    cfg = get_config(args.model, input_size=size, in_channels=enc.latent_channels, **overrides)
    return cfg, f"{size}x{size}x{enc.latent_channels} latents of data/vae_shapes32.npz"


class MiniditStep:
    """minidit's training state for cfg at `batch`, built from seed 0 (the same in every process)."""

    def __init__(self, cfg, batch):
        from minidit.backend import Generator
        from minidit.diffusion import create_diffusion
        from minidit.model import init_params
        from minidit.training.optim import AdamW, init_ema
        self.cfg = cfg
        self.params = init_params(cfg, seed=0)
        self.ema, self.opt = init_ema(self.params), AdamW(self.params, lr=1e-4, weight_decay=0.0)
        self.diffusion, self.rng = create_diffusion(""), Generator(0)
        self.x = self.rng.normal((batch, cfg.in_channels, cfg.input_size, cfg.input_size))
        self.y = self.rng.integers(0, cfg.num_classes, (batch,))

    def run(self, steps, threads=1, world=None):
        from minidit.commands.train import train_step
        from minidit.training.parallel import DataParallel
        with DataParallel(threads) as parallel:
            for _ in range(steps):
                train_step(self.params, self.ema, self.opt, self.cfg, self.diffusion, self.x, self.y, self.rng,
                           0.9999, parallel, world)


def process_worker(cfg, batch, cpus, workers):
    """What each forked worker does: build the same state, then run the steps rank 0 asks for
    ("<steps>", told through bcast_text) until it says "stop"."""
    def worker(world):
        from threadpoolctl import threadpool_limits
        threadpool_limits(max(1, cpus // workers), user_api="blas")
        step = MiniditStep(cfg, batch)
        while True:
            order = world.bcast_text()
            if order == "stop":
                return
            step.run(int(order), world=world)
    return worker


def torch_step(cfg, batch, threads):
    """A no-argument PyTorch eager training step of the same model and batch."""
    import torch
    import torch_dit
    from minidit.model import init_params
    from minidit.official import to_official
    torch.set_num_threads(threads)
    model = torch_dit.build_model(cfg)
    model.load_state_dict(torch_dit.state_dict_from_numpy(to_official(init_params(cfg, seed=0), cfg)), strict=True)
    model.train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt, diffusion = torch_dit.make_optimizer(model, lr=1e-4, weight_decay=0.0), torch_dit.Diffusion()
    g = np.random.default_rng(0)
    x = torch.from_numpy(g.standard_normal((batch, cfg.in_channels, cfg.input_size, cfg.input_size), dtype=np.float32))
    y = torch.from_numpy(g.integers(0, cfg.num_classes, batch))
    return lambda: torch_dit.train_step(model, ema, opt, diffusion, x, y, 0.9999)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="minidit-Tiny/2")
    ap.add_argument("--patch-size", type=int, default=1, help="patch size override (0: the model's own)")
    ap.add_argument("--pixels", action="store_true", help="32x32 RGB images instead of the VAE's latents")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2, help="threads / processes of the parallel variants")
    ap.add_argument("--steps", type=int, default=20, help="training steps per timed round")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds of every variant, taking turns")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps of every variant first")
    ap.add_argument("--json", default=None, help="write the figures to this file")
    ap.add_argument("--default-malloc", action="store_true",
                    help="leave glibc's malloc as it is (default: keep_freed_memory, as minidit's commands do)")
    args = ap.parse_args(argv)
    from threadpoolctl import threadpool_limits

    from minidit.backend import keep_freed_memory
    kept = False if args.default_malloc else keep_freed_memory()  # before the workers fork: they inherit it

    from minidit.flops import count_params
    from minidit.training.local_world import LocalWorld
    from minidit.training.parallel import available_cpus
    cpus, W = available_cpus(), args.workers
    cfg, data = main_job_config(args)
    world = LocalWorld.start(W, process_worker(cfg, args.batch_size, cpus, W))  # before torch's threads
    try:
        with threadpool_limits(max(1, cpus // W), user_api="blas"):
            ranks = MiniditStep(cfg, args.batch_size)  # rank 0 of the W processes
        one = MiniditStep(cfg, args.batch_size)
        try:
            pytorch = torch_step(cfg, args.batch_size, cpus)
        except ImportError:
            pytorch = None
            print("bench_workers: PyTorch is not installed (pip install 'minidit[reference]'): no PyTorch row")

        def processes(steps):
            world.bcast_text(str(steps))
            with threadpool_limits(max(1, cpus // W), user_api="blas"):
                ranks.run(steps, world=world)

        variants = {"minidit, 1 worker": lambda n: one.run(n),
                    f"minidit, {W} threads": lambda n: one.run(n, threads=W),
                    f"minidit, {W} processes": processes}
        if pytorch is not None:
            variants[f"PyTorch eager, {cpus} threads"] = lambda n: [pytorch() for _ in range(n)]
        for run in variants.values():
            run(args.warmup)
        rates = {name: [] for name in variants}
        names = list(variants)
        for r in range(args.rounds):
            for name in (names if r % 2 == 0 else names[::-1]):
                t0 = time.perf_counter()
                variants[name](args.steps)
                rates[name].append(args.steps / (time.perf_counter() - t0))
        world.bcast_text("stop")
    except BaseException:
        world.stop()
        raise
    world.close()
    rate = {name: statistics.median(v) for name, v in rates.items()}
    rec = {"machine": machine_name(), "cpus": cpus, "matmul_gflops": matmul_rate(2048),
           "model": args.model, "patch_size": cfg.patch_size, "data": data, "batch": args.batch_size,
           "params": count_params(cfg)["trainable"], "steps": args.steps, "rounds": args.rounds,
           "malloc": "keep_freed_memory" if kept else "glibc's default",
           "steps_per_sec": rate, "all": rates, "date": time.strftime("%Y-%m-%d %H:%M")}
    print(f"{rec['machine']}, {cpus} CPUs, float32 matmul {rec['matmul_gflops']:.0f} GFLOP/s (2048^3, all cores); "
          f"malloc: {rec['malloc']} (PyTorch's too: one process)")
    print(f"{args.model}, {cfg.patch_size}x{cfg.patch_size} patches, on {data}, batch {args.batch_size} "
          f"({rec['params']:,} params): training steps per second, median of {args.rounds} rounds of "
          f"{args.steps} steps")
    base = rate["minidit, 1 worker"]
    for name, v in rate.items():
        print(f"  {name:32s} {v:7.2f}  ({v / base:.2f}x one worker)")
    if pytorch is not None:
        ref = rate[f"PyTorch eager, {cpus} threads"]
        rec["step_time_vs_pytorch"] = {name: ref / v for name, v in rate.items() if not name.startswith("PyTorch")}
        print("step time against PyTorch eager on the same cores (minidit / PyTorch; below 1 is faster): "
              + ", ".join(f"{name.split(', ')[1]} {x:.2f}" for name, x in rec["step_time_vs_pytorch"].items()))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rec, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
