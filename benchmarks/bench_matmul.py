"""The machine's measured float32 matrix-product rate: the denominator of model-FLOP utilisation.

    python benchmarks/bench_matmul.py [--sizes 2048,4096] [--repeats 5] [--device cpu|gpu] [--json out.json]

A large square sgemm C = A @ B costs 2 n^3 floating-point operations (a multiply and an add per
MAC). The best of several runs is reported: it is the rate the BLAS reaches when nothing else
gets in the way, which is the fair peak to measure a model's matmuls against.
"""
import argparse
import json
import os
import platform
import time


def blas_threads():
    """(library name, threads) of NumPy's BLAS, as far as can be told."""
    try:
        from threadpoolctl import threadpool_info
        for info in threadpool_info():
            if info.get("user_api") == "blas":
                return info.get("internal_api", "blas"), int(info["num_threads"])
    except ImportError:
        pass
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if os.environ.get(var, "").isdigit():
            return "blas", int(os.environ[var])
    return "blas", os.cpu_count() or 1


def set_blas_threads(n):
    """Limit NumPy's BLAS to n threads (needs threadpoolctl); returns True when it was done."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return False
    threadpool_limits(limits=n, user_api="blas")
    return True


def matmul_rate(n=2048, repeats=5, device="cpu"):
    """Best float32 GFLOP/s of an (n x n) @ (n x n) product over `repeats` timed runs.

    device "cpu" uses NumPy; "gpu" uses CuPy (TF32 is off unless CUPY_TF32=1 is set).
    """
    import numpy as np
    if device == "gpu":
        import cupy as xp
        sync = xp.cuda.runtime.deviceSynchronize
    else:
        xp, sync = np, (lambda: None)
    rng = np.random.default_rng(0)
    a = xp.asarray(rng.standard_normal((n, n), dtype=np.float32))
    b = xp.asarray(rng.standard_normal((n, n), dtype=np.float32))
    c = xp.empty((n, n), dtype=xp.float32)
    xp.matmul(a, b, out=c)  # warm-up: thread pool start, page faults, kernel selection
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        xp.matmul(a, b, out=c)
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best / 1e9


def measure(sizes=(2048, 4096), repeats=5, device="cpu"):
    """{size: GFLOP/s} and the best over sizes, with a description of the machine."""
    rates = {n: matmul_rate(n, repeats, device) for n in sizes}
    lib, threads = blas_threads()
    machine = platform.processor() or platform.machine()
    if device == "gpu":
        import cupy
        machine = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    return {"device": device, "machine": machine,
            "cpu_count": os.cpu_count(), "blas": lib, "blas_threads": threads,
            "cupy_tf32": os.environ.get("CUPY_TF32", "0") if device == "gpu" else None,
            "gflops_by_size": {str(n): r for n, r in rates.items()}, "gflops": max(rates.values())}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="2048,4096", help="comma-separated matrix sides")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="BLAS threads (default: as configured)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    ap.add_argument("--json", default=None, help="write the result to this file")
    args = ap.parse_args(argv)
    if args.threads:
        set_blas_threads(args.threads)
    if args.device == "gpu":
        try:
            import cupy
            cupy.cuda.runtime.getDeviceCount()
        except Exception as e:  # no CuPy, no driver or no device
            print(f"bench_matmul: GPU skipped: CuPy cannot use a GPU here ({type(e).__name__}: {e})")
            return 0
    res = measure(tuple(int(s) for s in args.sizes.split(",")), args.repeats, args.device)
    print(f"float32 matmul on {res['device']} ({res['machine']}, {res['cpu_count']} CPUs, "
          f"{res['blas']} with {res['blas_threads']} threads), best of {args.repeats}:")
    for n, r in res["gflops_by_size"].items():
        print(f"  n = {n:>5}: {r:8.1f} GFLOP/s")
    print(f"  peak used for MFU: {res['gflops']:.1f} GFLOP/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
