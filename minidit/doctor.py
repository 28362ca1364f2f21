"""`python -m minidit.doctor [--device gpu]`: what minidit finds on this machine, and a proof that
it computes right there. It prints the versions (Python, NumPy and its BLAS, CuPy), the device and
its float32 matrix-product rate, then runs a tiny DiT on that device: a float64 gradient check of
the whole model (every parameter random) and one float32 training step. Exit 0 when all is well,
1 when the check fails, 2 when the device asked for is not there.
"""
import platform
import sys
import time

import numpy as np

from . import __version__, fused
from .backend import Generator, get_xp, set_device, synchronize, to_device
from .cli import CommandFailed, CommandParser, run_command


def matmul_gflops(device, n=2048, repeats=3):
    """Best float32 GFLOP/s of an (n x n) @ (n x n) product: 2 n^3 operations each."""
    xp = get_xp(device)
    rng = np.random.default_rng(0)
    a = to_device(rng.standard_normal((n, n), dtype=np.float32), device)
    b = to_device(rng.standard_normal((n, n), dtype=np.float32), device)
    xp.matmul(a, b)  # warm-up: thread pool, kernel selection
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        xp.matmul(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def _blas():
    try:
        from threadpoolctl import threadpool_info
        for info in threadpool_info():
            if info.get("user_api") == "blas":
                return f"{info.get('internal_api')} with {info.get('num_threads')} threads"
    except ImportError:
        pass
    return "unknown BLAS"


def check_model(device):
    """(max relative error of a float64 whole-model gradient check, loss of a float32 step)."""
    from .diffusion import create_diffusion
    from .gradcheck import check_gradients
    from .model import DiTConfig, dit_backward, dit_forward, init_params, param_shapes
    from .training.optim import AdamW, init_ema
    from .commands.train import train_step
    cfg = DiTConfig(input_size=8, patch_size=2, in_channels=3, hidden_size=16, depth=2, num_heads=2,
                    num_classes=5)
    rng = np.random.default_rng(0)
    P = {k: to_device(0.3 * rng.standard_normal(s), device) for k, s in param_shapes(cfg).items()}
    x = to_device(rng.standard_normal((2, 3, 8, 8)), device)
    t, y = np.array([3, 900]), np.array([1, 5])

    def f(x, **params):
        return dit_forward(params, x, t, y, cfg)

    def b(dout, cache):
        dx, g = dit_backward(dout, cache)
        return dict(x=dx, **g)

    res = check_gradients(f, b, dict(x=x, **P), tol=1e-5, num_checks=3)
    params = init_params(cfg, seed=0, device=device)
    ema, opt = init_ema(params), AdamW(params, lr=1e-3)
    gen = Generator(0, device=device)
    xb, yb = gen.normal((4, 3, 8, 8), device=device), gen.integers(0, 5, (4,), device=device)
    stats = train_step(params, ema, opt, cfg, create_diffusion(""), xb, yb, gen, 0.9)
    return res, stats


def run(args):
    device = set_device(args.device)  # "gpu" without one is a clear error (exit 2)
    print(f"minidit {__version__}, Python {platform.python_version()} on {platform.machine()}, "
          f"NumPy {np.__version__} ({_blas()})")
    try:
        import cupy  # only to report its version: minidit.backend is what uses it
        print(f"CuPy {cupy.__version__}")
    except ImportError:
        print("CuPy: not installed (for a GPU: pip install 'minidit[gpu]', see README)")
    if device == "gpu":
        xp = get_xp("gpu")
        props = xp.cuda.runtime.getDeviceProperties(0)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        print(f"device: gpu, {name}, fused kernels {'on' if fused.enabled(xp.zeros(1)) else 'off'}")
    else:
        print("device: cpu")
    print(f"float32 matmul on {device}: {matmul_gflops(device):.0f} GFLOP/s (n = 2048, best of 3)")
    t0 = time.perf_counter()
    res, stats = check_model(device)
    print(f"tiny DiT on {device}: float64 gradient check of every array, worst relative error "
          f"{res.max_error:.1e} (tolerance {res.tol:.0e}); a float32 training step, loss {stats['loss']:.4f} "
          f"({time.perf_counter() - t0:.1f} s)")
    if not res.ok or not stats["finite"]:
        raise CommandFailed(f"the check failed on {device}:\n{res}")
    print("all good")


def main(argv=None):
    ap = CommandParser(prog="python -m minidit.doctor", description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=None, help="cpu, gpu or auto (default: MINIDIT_DEVICE, else cpu)")
    return run_command(ap, run, argv)


if __name__ == "__main__":
    sys.exit(main())
