"""Data parallelism on CPU threads: the analog, on one machine, of the DistributedDataParallel
training of the official train.py (docs/paper.md §4.3), where every GPU runs the model on its own
slice of the batch and the gradients are averaged before the optimiser step.

Why threads help a NumPy model: the matrix products already use every core through BLAS, but
the element-wise work (GELU, LayerNorm, softmax, modulation) runs on one core. Each NumPy call
releases Python's global lock, so W threads that each own 1/W of the batch run those passes on
W cores at once. BLAS is then limited to one thread per worker (with threadpoolctl), or the
workers' BLAS threads would fight over the same cores.

The gradient of the batch mean is the sum over shards of each shard's gradient with the upstream
weight 1/N (N the whole batch), added in a fixed shard order (GradientSum, while the backward
passes run, as DDP overlaps its all-reduce with the backward), so a run is deterministic for a
given number of workers. Different
worker counts round differently (float32 sums in another order), which is why a checkpoint
records the count and resume reuses it.

Threads still share one interpreter: between NumPy calls only one of them runs Python, which
limits small models, whose steps are many short calls. `--worker-kind processes` runs the same
shards in worker processes instead (local_world.py), with the same sums in the same order.
"""
import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

MAX_AUTO_WORKERS = 8
_controller = None  # threadpoolctl's view of the loaded BLAS libraries, found once


def _blas_controller():
    global _controller
    if _controller is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError as e:  # a dependency of minidit; only missing in odd installs
            raise ImportError("data-parallel workers need threadpoolctl (pip install threadpoolctl), "
                              "or run with one worker (--workers 1)") from e
        _controller = ThreadpoolController()
    return _controller


def available_cpus():
    """CPUs this process may run on (respects taskset / container limits where the OS says)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_workers(workers, batch_size, device="cpu"):
    """The worker count to use: 0 means one per available CPU (at most 8); never more than the
    batch; always 1 on the GPU, where one stream already fills the device."""
    if workers < 0:
        raise ValueError(f"workers must be >= 0 (0 = one per CPU), got {workers}")
    if device != "cpu":
        return 1
    if workers == 0:
        workers = min(available_cpus(), MAX_AUTO_WORKERS)
    return max(1, min(workers, batch_size))


def shards(n, workers):
    """Contiguous slices that split range(n) into `workers` parts whose sizes differ by at most one."""
    bounds = np.linspace(0, n, workers + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


class DataParallel:
    """A pool of worker threads that maps a function over batch shards.

    Use as a context manager around the training loop: inside it BLAS runs one thread per
    worker. With workers == 1 it calls the function once on the whole batch, in the caller's
    thread, and changes nothing.
    """

    def __init__(self, workers=1):
        self.workers = int(workers)
        self._pool = None
        self._limits = contextlib.nullcontext()

    def __enter__(self):
        if self.workers > 1:
            self._limits = _blas_controller().limit(limits=1, user_api="blas")
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="minidit-worker")
        return self

    def __exit__(self, *exc):
        if self._pool is not None:
            # on an error or an interrupt, work not yet started is dropped: only the running
            # shards finish, so Ctrl-C stops within one shard's forward/backward
            self._pool.shutdown(wait=True, cancel_futures=exc[0] is not None)
            self._pool = None
            self._limits.__exit__(*exc)
        return False

    def each(self, fn, items):
        """[fn(item) for item in items], run on the workers; results in the items' order. Each
        item's work must touch only its own arrays (each parameter's update, each batch shard),
        or share them through a lock, as GradientSum does."""
        if self._pool is None:
            return [fn(item) for item in items]
        return list(self._pool.map(fn, items))

    def shards(self, n):
        """The slices of range(n) to hand out: one per worker, or all of it without a pool."""
        return shards(n, self.workers) if self._pool is not None else [slice(0, n)]


class GradientSum:
    """The sum of the workers' gradients, built while their backward passes run, as DDP overlaps
    its all-reduce with the backward (gradient "buckets").

    Each worker hands over a group of gradients (dit_backward's sink) as soon as it has them.
    Worker s adds a parameter's gradient into the total only after worker s-1 has added its
    own, so every sum is ((g0 + g1) + g2) + ... whatever the threads' timing (runs stay
    deterministic), and each worker's copy is freed as soon as it is added: the batch's
    gradients exist about once, not once per worker. Worker 0's arrays become the total.
    """

    def __init__(self):
        self.total = {}
        self._added = {}  # key -> how many workers have added it
        self._turn = threading.Condition()
        self._failed = False

    def add(self, shard, grads):
        for k, g in grads.items():
            with self._turn:
                self._turn.wait_for(lambda: self._failed or self._added.get(k, 0) == shard)
                if self._failed:
                    raise RuntimeError("another data-parallel worker failed")
            if shard == 0:
                self.total[k] = g
            else:
                self.total[k] += g  # no lock needed: until we mark it added, only we touch total[k]
            with self._turn:
                self._added[k] = shard + 1
                self._turn.notify_all()

    def fail(self):
        with self._turn:
            self._failed = True
            self._turn.notify_all()
