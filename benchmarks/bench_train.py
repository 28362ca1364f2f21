"""Training-step and forward time of minidit against PyTorch eager (benchmarks/torch_dit.py), in one
process, interleaved, plus peak memory and model-FLOP utilisation.

    python benchmarks/bench_train.py [--quick] [--configs DiT-S/2:8,minidit-Tiny/4:64]
                                     [--repeats 7] [--threads N] [--device cpu|gpu] [--json out.json]

A training step is minidit.commands.train.train_step (t and noise drawn, label dropout, forward, hybrid
loss, backward, AdamW lr 1e-4, EMA 0.9999) against torch_dit.train_step doing the same work with
torch.optim.AdamW and autograd. Both start from the same float32 weights. See benchmarks/README.md.
"""
import argparse
import copy
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_matmul import blas_threads, measure as measure_matmul, set_blas_threads  # noqa: E402

# (config, batch): every model at input 32; DiT-* on 32x32x4 latents with 1000 classes,
# minidit-Tiny/4 (the default teaching model) on 32x32 RGB with 10 classes.
DEFAULT_RUNS = [("DiT-S/2", 8), ("DiT-S/4", 32), ("DiT-B/4", 8), ("minidit-Tiny/4", 64)]


def parse_runs(text):
    runs = []
    for item in text.split(","):
        name, _, batch = item.strip().rpartition(":")
        if not name or not batch.isdigit():
            raise ValueError(f"--configs: {item!r} is not NAME:BATCH (e.g. DiT-S/2:8)")
        runs.append((name, int(batch)))
    return runs


def build(name, batch, device, framework, train=True, seed=0, workers=1):
    """(train_step_fn or None, forward_fn, cfg) for one framework, from init_params(seed).

    train=False builds only what a forward needs (no EMA, no optimiser). workers > 1 runs
    minidit data-parallel on that many threads, one BLAS thread each (minidit/training/parallel.py)."""
    from minidit.backend import Generator, get_array_module
    from minidit.diffusion import create_diffusion
    from minidit.model import dit_apply, get_config, init_params
    from minidit.training.optim import AdamW, init_ema
    from minidit.training.parallel import DataParallel
    from minidit.commands.train import train_step
    cfg = get_config(name, input_size=32)
    params = init_params(cfg, seed=seed, device=device)
    rng = Generator(seed, device=device)
    x = rng.normal((batch, cfg.in_channels, cfg.input_size, cfg.input_size), device=device)
    y = rng.integers(0, cfg.num_classes, (batch,), device=device)
    t = rng.integers(0, 1000, (batch,), device=device)
    if framework == "minidit":
        step = None
        if train:
            ema, opt, diffusion = init_ema(params), AdamW(params, lr=1e-4, weight_decay=0.0), create_diffusion("")

            def train_fn():
                with DataParallel(workers) as parallel:
                    return train_step(params, ema, opt, cfg, diffusion, x, y, rng, 0.9999, parallel)
            step = train_fn

        def forward():
            with DataParallel(workers) as parallel:
                parts = parallel.each(lambda s: dit_apply(params, x[s], t[s], y[s], cfg), parallel.shards(batch))
            return parts[0] if len(parts) == 1 else get_array_module(parts[0]).concatenate(parts)
        return step, forward, cfg
    import torch
    import torch_dit
    from minidit.backend import to_numpy
    from minidit.official import to_official
    dev = "cuda" if device == "gpu" else "cpu"
    model = torch_dit.build_model(cfg).to(dev)
    model.load_state_dict(torch_dit.state_dict_from_numpy(to_official(params, cfg)), strict=True)
    model.train()
    xt, yt, tt = (torch.from_numpy(to_numpy(a)).to(dev) for a in (x, y, t))
    params = None  # torch holds its own copy now
    step = None
    if train:
        ema = copy.deepcopy(model).eval().requires_grad_(False)
        opt, diffusion = torch_dit.make_optimizer(model, lr=1e-4, weight_decay=0.0), torch_dit.Diffusion()
        step = lambda: torch_dit.train_step(model, ema, opt, diffusion, xt, yt, 0.9999)  # noqa: E731
    else:
        model.requires_grad_(False)

    def forward():
        with torch.no_grad():
            return model(xt, tt, yt)
    return step, forward, cfg


def synchronizer(device):
    if device != "gpu":
        return lambda: None
    import cupy
    import torch

    def sync():
        cupy.cuda.Device().synchronize()
        torch.cuda.synchronize()
    return sync


def time_interleaved(fns, warmup, repeats, sync):
    """Median seconds of each function, called in alternating order after `warmup` rounds."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
            sync()
    samples = {k: [] for k in fns}
    names = list(fns)
    for r in range(repeats):
        for k in (names if r % 2 == 0 else names[::-1]):
            gc.collect()
            sync()
            t0 = time.perf_counter()
            fns[k]()
            sync()
            samples[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in samples.items()}, samples


# ---- memory: each framework alone in a fresh subprocess (CPU), or allocator counters (GPU) ----

def _proc_status():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "VmHWM")):
                key, val = line.split(":")
                out[key] = int(val.split()[0]) / 1024  # MiB
    return out


def _release_free_memory():
    """Collect garbage and hand the allocator's free pages back to the system (glibc), so the
    resident set counts live data, not memory that was freed but kept."""
    gc.collect()
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def memory_worker(framework, label, name, batch, threads, steps, workers=1):
    """Run in a fresh subprocess: resident memory of one framework's training step or forward."""
    set_threads(threads)
    # the baseline: libraries imported and warmed (lazily loaded kernels and thread pools
    # touched) by one call on a batch of one, whose arrays are then freed
    step, forward, _ = build(name, 1, "cpu", framework, train=(label == "train"), workers=workers)
    (step if label == "train" else forward)()
    del step, forward
    _release_free_memory()
    libs = _proc_status()["VmRSS"]
    step, forward, _ = build(name, batch, "cpu", framework, train=(label == "train"), workers=workers)
    fn = step if label == "train" else forward
    fn()  # the first call allocates torch's AdamW moments and gradients and warms caches
    _release_free_memory()
    before = _proc_status()["VmRSS"]
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark VmHWM to the current resident set
    for _ in range(steps):
        fn()
    peak = _proc_status()["VmHWM"]
    res = {"libraries_mib": libs, "state_mib": before - libs, "peak_mib": peak - libs,
           "transient_mib": peak - before}
    if framework == "minidit":  # NumPy reports its array allocations to tracemalloc
        import tracemalloc
        _release_free_memory()
        tracemalloc.start()
        fn()
        res["tracemalloc_transient_mib"] = tracemalloc.get_traced_memory()[1] / 2 ** 20
        tracemalloc.stop()
    print(json.dumps(res))


def memory_cpu(framework, label, name, batch, threads, steps, workers=1):
    if not os.path.exists("/proc/self/clear_refs"):
        return {"error": "needs Linux /proc to reset the peak resident set"}
    cmd = [sys.executable, __file__, "--_worker",
           json.dumps([framework, label, name, batch, threads, steps, workers])]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        return {"error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit {p.returncode}"}
    return json.loads(p.stdout.strip().splitlines()[-1])


def memory_gpu(fns, steps):
    """GPU memory of each (framework, phase) in this process: what its arrays hold before the
    call (state) and the peak above that during it (transient), in MiB. CuPy: a hook on its
    memory pool counts live blocks; torch: memory_allocated and max_memory_allocated."""
    import cupy
    import torch

    class Peak(cupy.cuda.MemoryHook):
        name = "PeakHook"

        def __init__(self):
            self.used = self.peak = 0

        def malloc_postprocess(self, **kw):
            self.used += kw["mem_size"]
            self.peak = max(self.peak, self.used)

        def free_postprocess(self, **kw):
            self.used -= kw["mem_size"]

    res = {"minidit": {}, "torch": {}}
    for (fw, label), fn in fns.items():
        cupy.cuda.Device().synchronize()
        torch.cuda.synchronize()
        if fw == "minidit":
            state = cupy.get_default_memory_pool().used_bytes()
            hook = Peak()
            with hook:
                for _ in range(steps):
                    fn()
                cupy.cuda.Device().synchronize()
            transient = hook.peak
        else:
            state = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            for _ in range(steps):
                fn()
            torch.cuda.synchronize()
            transient = torch.cuda.max_memory_allocated() - state
        res[fw][label] = {"state_mib": state / 2 ** 20, "transient_mib": transient / 2 ** 20,
                          "peak_mib": (state + transient) / 2 ** 20}
    return res


def set_threads(n):
    import torch
    if n:
        if not set_blas_threads(n):
            print("bench_train: threadpoolctl is not installed; NumPy keeps its BLAS threads "
                  "(set OPENBLAS_NUM_THREADS before starting)", file=sys.stderr)
    torch.set_num_threads(n or blas_threads()[1])


def gpu_ready():
    try:
        import cupy
        import torch
        if cupy.cuda.runtime.getDeviceCount() < 1 or not torch.cuda.is_available():
            return "CuPy or CUDA PyTorch sees no GPU"
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


def main(argv=None):
    ap = argparse.ArgumentParser(description="minidit vs PyTorch eager: training step and forward time")
    ap.add_argument("--configs", default=None, help="NAME:BATCH,... (default: "
                    + ",".join(f"{n}:{b}" for n, b in DEFAULT_RUNS) + ")")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per function (default 7, quick 3)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed rounds first (default 2, quick 1)")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for NumPy's BLAS and torch (default: NumPy's current BLAS threads)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    ap.add_argument("--workers", type=int, default=0,
                    help="minidit data-parallel threads, one BLAS thread each (default: as many as "
                         "torch's threads on the CPU, 1 on the GPU)")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    ap.add_argument("--quick", action="store_true", help="fewer repeats and a shorter matmul check")
    ap.add_argument("--json", default=None, help="write every figure to this file")
    ap.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._worker:
        memory_worker(*json.loads(args._worker))
        return 0
    try:
        import torch
    except ImportError:
        print("bench_train: PyTorch is not installed (pip install 'minidit[bench]'); nothing to compare with")
        return 0
    if args.device == "gpu":
        reason = gpu_ready()
        if reason:
            print(f"bench_train: GPU table skipped: {reason}")
            return 0
        torch.backends.cuda.matmul.allow_tf32 = False  # TF32 off in both: CuPy's default unless CUPY_TF32=1
        torch.backends.cudnn.allow_tf32 = False
        if os.environ.get("CUPY_TF32", "0") != "0":
            print("bench_train: warning: CUPY_TF32 is set, so CuPy uses TF32 and torch does not")
    repeats = args.repeats or (3 if args.quick else 7)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    mem_steps = 1 if args.quick else 2
    runs = parse_runs(args.configs) if args.configs else DEFAULT_RUNS
    set_threads(args.threads)
    threads = blas_threads()
    workers = 1 if args.device == "gpu" else (args.workers or torch.get_num_threads())
    sync = synchronizer(args.device)
    mm_args = ((2048,) if args.quick else (2048, 4096), 3, "cpu") if args.device == "cpu" \
        else ((4096, 8192), 5, "gpu")
    # the matmul rate is measured again after every config and the best is kept: on a busy
    # machine a single measurement may catch a bad moment
    matmul = [measure_matmul(*mm_args)]
    print(f"device {args.device}; {matmul[0]['machine']}, {os.cpu_count()} CPUs; NumPy BLAS: "
          f"{threads[0]} with {threads[1]} threads; torch {torch.__version__} with "
          f"{torch.get_num_threads()} intra-op threads; minidit with {workers} data-parallel "
          f"worker(s); float32")
    print(f"float32 matmul rate: {matmul[0]['gflops']:.1f} GFLOP/s; {warmup} warm-up round(s), "
          f"median of {repeats} interleaved runs")
    from minidit.flops import forward_macs
    rows = []
    for name, batch in runs:
        fns = {}
        for fw in ("minidit", "torch"):
            step, fwd, cfg = build(name, batch, args.device, fw, workers=workers if fw == "minidit" else 1)
            fns[(fw, "train")], fns[(fw, "forward")] = step, fwd
        med, samples = time_interleaved(fns, warmup, repeats, sync)
        row = {"config": name, "batch": batch, "input_size": cfg.input_size,
               "in_channels": cfg.in_channels, "num_classes": cfg.num_classes,
               "forward_gmacs_per_image": forward_macs(cfg) / 1e9}
        for (fw, label), sec in med.items():
            row[f"{fw}_{label}_s"] = sec
            row[f"{fw}_{label}_samples_s"] = samples[(fw, label)]
        for label in ("train", "forward"):
            row[f"ratio_{label}"] = row[f"minidit_{label}_s"] / row[f"torch_{label}_s"]
        if not args.no_memory:
            if args.device == "cpu":
                row["memory"] = {fw: {label: memory_cpu(fw, label, name, batch, args.threads or threads[1],
                                                        mem_steps, workers if fw == "minidit" else 1)
                                      for label in ("train", "forward")}
                                 for fw in ("minidit", "torch")}
            else:
                row["memory"] = memory_gpu(fns, mem_steps)
        del fns
        gc.collect()
        matmul.append(measure_matmul(*mm_args))
        rows.append(row)
        print_row(row, first=len(rows) == 1)
    rate = max(m["gflops"] for m in matmul)
    for row in rows:
        flop_fwd = 2.0 * row["forward_gmacs_per_image"] * 1e9 * row["batch"]  # 2 FLOPs per MAC
        for fw in ("minidit", "torch"):
            for label, mult in (("train", 3), ("forward", 1)):  # a backward costs ~2 forwards
                row[f"{fw}_{label}_mfu"] = mult * flop_fwd / row[f"{fw}_{label}_s"] / (rate * 1e9)
    print_mfu(rows, rate, [m["gflops"] for m in matmul])
    print_notes(args)
    if args.json:
        out = {"device": args.device, "machine": matmul[0]["machine"], "cpu_count": os.cpu_count(),
               "blas": threads[0], "blas_threads": threads[1], "torch_version": torch.__version__,
               "torch_threads": torch.get_num_threads(), "matmul_gflops": rate, "matmul_runs": matmul,
               "repeats": repeats, "warmup": warmup, "quick": args.quick, "rows": rows}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
        print(f"wrote {args.json}")
    return 0


def _mem(row, fw, label):
    m = row.get("memory", {}).get(fw, {}).get(label)
    if not m or "error" in m:
        return "-"
    return f"{m['peak_mib']:.0f} ({m['transient_mib']:.0f})"


def print_row(row, first):
    if first:
        print(f"{'config':<16}{'batch':>6}{'':>3}{'minidit s':>11}{'torch s':>10}{'ours/torch':>11}"
              f"   {'peak MiB ours':>15}{'peak MiB torch':>16}")
    for label in ("train", "forward"):
        head = (row["config"], row["batch"]) if label == "train" else ("", "")
        print(f"{head[0]:<16}{head[1]:>6}{label[0]:>3}{row[f'minidit_{label}_s']:>11.3f}"
              f"{row[f'torch_{label}_s']:>10.3f}{row[f'ratio_{label}']:>11.2f}"
              f"   {_mem(row, 'minidit', label):>15}{_mem(row, 'torch', label):>16}", flush=True)


def print_mfu(rows, rate, rates):
    print(f"\nmodel-FLOP utilisation against {rate:.1f} GFLOP/s (best of the matmul runs: "
          f"{', '.join(f'{r:.0f}' for r in rates)})")
    print(f"{'config':<16}{'batch':>6}{'MFU t ours':>12}{'MFU t torch':>13}{'MFU f ours':>12}{'MFU f torch':>13}")
    for r in rows:
        print(f"{r['config']:<16}{r['batch']:>6}" + "".join(
            f"{100 * r[f'{fw}_{label}_mfu']:>{w}.1f}%" for label in ("train", "forward")
            for fw, w in (("minidit", 11), ("torch", 12))))


def print_notes(args):
    print("t = training step (draw t and noise, label dropout, forward, hybrid loss, backward, "
          "AdamW, EMA); f = forward only (no gradient); times are medians in seconds")
    print("MFU = (3 for t, 1 for f) x forward MACs x 2 x batch / time / matmul rate")
    if args.no_memory:
        return
    if args.device == "cpu":
        print("peak MiB (transient): each framework and phase alone in a fresh process, measured "
              "on the resident set (Linux /proc, freed memory handed back with malloc_trim), above "
              "the process with its libraries imported. peak = what training or the forward holds "
              "at its highest: weights, EMA, AdamW moments (train), activations, gradients, "
              "temporaries; (transient) = the rise during one call after a warm-up call, i.e. "
              "without the state that persists between steps (torch keeps .grad between steps)")
    else:
        print("peak MiB (transient): bytes held by each framework's live arrays (CuPy memory-pool "
              "hook; torch max_memory_allocated); transient = the rise during the call")


if __name__ == "__main__":
    raise SystemExit(main())
