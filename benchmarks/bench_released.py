"""What sampling the released DiT-XL/2 costs on this machine (issue 16), with random weights of the
real size, since the released files cannot be downloaded here:

    python benchmarks/bench_released.py [--image-size 256] [--device cpu] [--json results/released/bench.json]

Times, each in a fresh process so that its peak memory is its own:
  * one guided DDIM step of DiT-XL/2 (batch 1, doubled to 2 by guidance), as sample.py runs it;
  * one decode of a latent by the Stable Diffusion VAE decoder (sd-vae-ft-mse's shape) to pixels;
and prints the estimate for a whole image with DDIM 50 and with the official DDPM 250. Peak memory
is the process's maximum resident set (it includes the 2.7 GB of float32 DiT weights) and the
peak of NumPy's own allocations (tracemalloc).
"""
import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _matmul_rate(n=2048):
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    best = min(_timed(lambda: a @ a) for _ in range(5))
    return 2 * n ** 3 / best / 1e9


def _timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def dit_step(size, device, reps, model="DiT-XL/2"):
    import tracemalloc
    from minidit.backend import Generator, set_device, synchronize
    from minidit.diffusion import create_diffusion
    from minidit.guidance import make_model_fn
    from minidit.backend import to_device
    from minidit.model import get_config, param_shapes
    device = set_device(device)
    cfg = get_config(model, input_size=size // 8)
    # float32 weights of the real shapes, drawn directly in float32 (as a loaded file would be:
    # init_params draws in float64 first, whose transient would inflate the peak memory)
    rng = np.random.default_rng(1)
    params = {k: to_device(rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02), device)
              for k, shape in param_shapes(cfg).items()}
    diffusion = create_diffusion("ddim50", learn_sigma=True)
    model_fn = make_model_fn(params, cfg, np.array([207]), 4.0, "official")
    x = Generator(0, device=device).normal((1, 4, size // 8, size // 8), dtype=np.float32)
    tracemalloc.start()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        x = diffusion.ddim_sample(model_fn, x, np.array([25]), rng=Generator(1, device=device))["sample"]
        synchronize()
        times.append(time.perf_counter() - t)
    _, peak = tracemalloc.get_traced_memory()
    return {"seconds": min(times), "all_seconds": times, "numpy_peak_mib": peak / 2 ** 20}


def vae_decode(size, device, reps):
    import tracemalloc
    from minidit.backend import set_device, synchronize, to_device
    from minidit.latent.sd_vae import SDVAE, SDVAEConfig, param_shapes
    device = set_device(device)
    cfg = SDVAEConfig()
    rng = np.random.default_rng(0)
    P = {}
    for name, shape in param_shapes(cfg).items():
        if name.endswith("bias"):
            P[name] = np.zeros(shape, np.float32)
        elif len(shape) == 1:  # a GroupNorm's scale
            P[name] = np.ones(shape, np.float32)
        else:  # LeCun-style scale (variance 1 / fan-in) keeps the activations finite through 30 convolutions
            fan_in = int(np.prod(shape[1:]))
            P[name] = (rng.standard_normal(shape) * np.sqrt(1.0 / fan_in)).astype(np.float32)
    vae = SDVAE(P, cfg, device)
    z = to_device(rng.standard_normal((1, 4, size // 8, size // 8)).astype(np.float32), device)
    tracemalloc.start()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        img = vae.decode_latents(z)
        synchronize()
        times.append(time.perf_counter() - t)
    _, peak = tracemalloc.get_traced_memory()
    assert img.shape == (1, 3, size, size)
    return {"seconds": min(times), "all_seconds": times, "numpy_peak_mib": peak / 2 ** 20,
            "decoder_params": int(sum(np.prod(P[k].shape) for k in P if k.startswith(("decoder.", "post_quant"))))}


def _child(what, size, device, reps, model):
    out = dit_step(size, device, reps, model) if what == "dit" else vae_decode(size, device, reps)
    out["max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--image-size", type=int, default=256, choices=[256, 512])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--model", default="DiT-XL/2", help="another DiT size, for a quick trial of the script")
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return _child(a.child, a.image_size, a.device, a.reps, a.model)
    rate = _matmul_rate()
    res = {}
    for what in ("dit", "vae"):
        r = subprocess.run([sys.executable, __file__, "--child", what, "--image-size", str(a.image_size),
                            "--device", a.device, "--reps", str(a.reps), "--model", a.model], capture_output=True, text=True, check=True)
        res[what] = json.loads(r.stdout.strip().splitlines()[-1])
    step, dec = res["dit"]["seconds"], res["vae"]["seconds"]
    rec = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "device": a.device,
           "model": a.model,
           "matmul_gflops": rate, "image_size": a.image_size, "guided_ddim_step_s": step, "decode_s": dec,
           "image_ddim50_s": 50 * step + dec, "image_ddpm250_s": 250 * step + dec, **res,
           "date": time.strftime("%Y-%m-%d %H:%M")}
    print(f"{rec['machine']}, {rec['cpus']} CPUs, float32 matmul {rate:.0f} GFLOP/s, device {a.device}")
    print(f"{a.model} {a.image_size} px, one guided DDIM step (batch 1 -> 2): {step:.2f} s "
          f"(peak RSS {res['dit']['max_rss_mib']:.0f} MiB, NumPy peak {res['dit']['numpy_peak_mib']:.0f} MiB)")
    print(f"SD VAE decode to {a.image_size} px: {dec:.2f} s (peak RSS {res['vae']['max_rss_mib']:.0f} MiB, "
          f"NumPy peak {res['vae']['numpy_peak_mib']:.0f} MiB; {res['vae']['decoder_params'] / 1e6:.1f}M decoder params)")
    print(f"one image: DDIM 50 about {rec['image_ddim50_s'] / 60:.1f} min, DDPM 250 about {rec['image_ddpm250_s'] / 60:.1f} min")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(rec, indent=1))


if __name__ == "__main__":
    main()
