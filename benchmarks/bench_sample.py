"""Sampling throughput of minidit: images per second of 250-step DDPM with classifier-free
guidance (scale 4, the paper's picture setting) through minidit.commands.sample.generate.

    python benchmarks/bench_sample.py [--quick] [--model minidit-Tiny/4] [--images 64]
                                      [--steps 250] [--ckpt runs/tiny] [--device cpu|gpu] [--json out.json]

Guidance doubles the batch (conditional and null-class halves), so each step is one forward of
2 x images. Without --ckpt the weights are the official initialisation with the zero-initialised
layers given small random values, so every layer does real arithmetic; speed does not depend on
what the weights have learned.
"""
import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_matmul import blas_threads, measure as measure_matmul, set_blas_threads  # noqa: E402


def weights(name, ckpt, device):
    import numpy as np
    from minidit.backend import to_device
    from minidit.model import get_config, init_params
    if ckpt:
        from minidit.training.checkpoint import load_model
        params, cfg, _ = load_model(ckpt, device=device)
        return params, cfg
    cfg = get_config(name)
    params = init_params(cfg, seed=0)
    rng = np.random.default_rng(0)
    for k, v in params.items():
        if not np.any(v):  # the zero-initialised adaLN and final layers
            params[k] = (0.02 * rng.standard_normal(v.shape)).astype(v.dtype)
    return to_device(params, device), cfg


def main(argv=None):
    ap = argparse.ArgumentParser(description="minidit sampling throughput (DDPM with guidance)")
    ap.add_argument("--model", default="minidit-Tiny/4", help="config name (ignored with --ckpt)")
    ap.add_argument("--ckpt", default=None, help="a trained minidit checkpoint or run directory")
    ap.add_argument("--images", type=int, default=None, help="images per run (default 64, quick 16)")
    ap.add_argument("--steps", type=int, default=None, help="DDPM steps (default 250, quick 25)")
    ap.add_argument("--cfg-scale", type=float, default=4.0)
    ap.add_argument("--repeats", type=int, default=None, help="timed runs (default 3, quick 1)")
    ap.add_argument("--threads", type=int, default=None, help="NumPy BLAS threads")
    ap.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    ap.add_argument("--workers", type=int, default=0,
                    help="data-parallel threads sharing the batch (0: one per CPU; minidit/training/parallel.py)")
    ap.add_argument("--quick", action="store_true", help="fewer steps and images, a smaller matmul")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    images = args.images or (16 if args.quick else 64)
    steps = args.steps or (25 if args.quick else 250)
    repeats = args.repeats or (1 if args.quick else 3)
    if args.threads:
        set_blas_threads(args.threads)
    if args.device == "gpu":
        from minidit.backend import gpu_available
        if not gpu_available():
            print("bench_sample: GPU skipped: CuPy cannot use a GPU here")
            return 0
    import numpy as np
    from minidit.flops import forward_macs
    from minidit.commands.sample import generate
    params, cfg = weights(args.model, args.ckpt, args.device)
    labels = np.arange(images) % cfg.num_classes
    from minidit.training.parallel import resolve_workers
    workers = resolve_workers(args.workers, images, args.device)
    generate(params, cfg, labels[:2], 2, "ddpm", args.cfg_scale, seed=0, device=args.device,
             workers=workers)  # warm-up
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        x = generate(params, cfg, labels, steps, "ddpm", args.cfg_scale, seed=r, device=args.device,
                     workers=workers)
        times.append(time.perf_counter() - t0)  # generate returns host arrays: the GPU is done
    assert x.shape == (images, cfg.in_channels, cfg.input_size, cfg.input_size)
    best = min(times)
    batch = 2 * images if args.cfg_scale > 1 else images
    flops = 2.0 * forward_macs(cfg) * batch * steps
    if args.device == "cpu":
        mm = measure_matmul((2048,), 3, "cpu")
    else:  # quick: one small product (the dry run of gpu_check.py runs this on the CuPy stand-in)
        mm = measure_matmul((1024,), 1, "gpu") if args.quick else measure_matmul((4096, 8192), 5, "gpu")
    lib, threads = blas_threads()
    res = {"model": args.ckpt or args.model, "device": args.device, "machine": mm["machine"],
           "cpu_count": os.cpu_count(), "blas_threads": threads, "workers": workers, "images": images, "steps": steps,
           "cfg_scale": args.cfg_scale, "seconds": times, "best_seconds": best,
           "images_per_second": images / best, "seconds_per_step": best / steps,
           "achieved_gflops": flops / best / 1e9, "matmul_gflops": mm["gflops"],
           "mfu": flops / best / (mm["gflops"] * 1e9)}
    print(f"{res['model']} on {args.device} ({platform.machine()}, {lib} with {threads} threads, "
          f"{workers} worker(s)): "
          f"{images} images, {steps}-step DDPM, guidance {args.cfg_scale:g} "
          f"(a forward of {batch} per step), best of {repeats}")
    print(f"  {res['images_per_second']:.2f} images/s   {1000 * res['seconds_per_step']:.1f} ms/step   "
          f"{res['achieved_gflops']:.1f} GFLOP/s in the model = {100 * res['mfu']:.1f}% of the "
          f"measured matmul rate ({mm['gflops']:.0f} GFLOP/s)")
    if args.quick:
        print(f"  (quick: {steps} steps; a 250-step run takes about {250 / steps:.0f}x as long per image)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
