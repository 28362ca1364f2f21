"""Data-parallel training over processes, on one machine or many: MPI (mpi4py) on CPUs, NCCL
through CuPy on GPUs. The official train.py does this with PyTorch DDP (docs/paper.md §4.3): every
rank runs the model on its slice of each batch, the gradients are summed across ranks before the
optimiser step, and rank 0 alone writes checkpoints and logs.

    mpirun -n 2 python -m minidit.train --model minidit-Tiny/4 --steps 3000 --out runs/tiny

How minidit keeps a K-rank run equal to one process (tests/test_distributed.py):
- every rank draws the *whole* batch, its timesteps, noise and label dropout from the one seeded
  stream, then works on its own shards of it, so no random number depends on K;
- the batch is cut into K x W shards (W worker threads per rank, parallel.py), rank r owning
  shards rW .. rW + W - 1, exactly the shards a single process with K x W threads would cut;
- gradients are not all-reduced with MPI's sum, whose order of additions is the library's choice,
  but all-gathered (each group as soon as the backward yields it, so the transfer overlaps the rest
  of the backward, DDP's "buckets") and added on every rank in shard order, ((g0 + g1) + g2) + ...,
  the order of parallel.GradientSum. Every rank computes the same bits, so the K copies of the
  weights never drift apart, and K ranks x 1 thread equal 1 process x K threads bit for bit.
  The price is memory and traffic K times an all-reduce's: right for teaching-scale models.

A rank that fails stops every rank at once (MPI_Abort), naming itself; a rank killed outright is
noticed by the launcher (mpirun), which ends the others.

On one machine the same ranks run without MPI with `--worker-kind processes`: local_world.py
builds a world with these collectives from the standard library, and ProcessGradientSum and
train.py's step are shared by both.
"""
import json
import math
import os
import sys
import time
import threading

from ..backend import get_array_module
from .parallel import available_cpus

# environment variables by which MPI launchers tell a process its rank and the world's size
_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE")


def launched_ranks():
    """The number of ranks the MPI launcher started (1 when not started by mpirun)."""
    for v in _SIZE_VARS:
        if os.environ.get(v, "").isdigit():
            return int(os.environ[v])
    return 1


class SingleProcess:
    """The world of an ordinary run: one rank."""
    size, rank, local_rank, local_size = 1, 0, 0, 1
    name = "single process"

    def abort(self, code=1):
        raise SystemExit(code)


class MPIWorld:
    """COMM_WORLD of mpi4py, with the few collectives training needs."""
    name = "MPI"

    def __init__(self):
        try:
            from mpi4py import MPI
        except ImportError:
            raise ImportError(f"started by an MPI launcher with {launched_ranks()} ranks, but mpi4py is not "
                              f"installed: pip install -e \".[mpi]\"") from None
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        self.size, self.rank = self.comm.Get_size(), self.comm.Get_rank()
        local = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        local.Free()
        self._lock = threading.Lock()  # MPI calls from worker threads go one at a time

    def iallgather(self, send, recv):
        with self._lock:
            return self.comm.Iallgather(send, recv)

    def test(self, requests):
        """Let the library progress its outstanding transfers (MPICH moves them only inside calls)."""
        with self._lock:
            self.MPI.Request.Testall(requests)

    def waitall(self, requests):
        with self._lock:
            self.MPI.Request.Waitall(requests)

    def allgather(self, send):
        xp = get_array_module(send)
        recv = xp.empty((self.size,) + tuple(send.shape), dtype=send.dtype)
        with self._lock:
            self.comm.Allgather(send, recv)
        return recv

    def bcast_text(self, text=None):
        """Rank 0's string on every rank (as UTF-8 bytes: nothing is unpickled)."""
        import numpy as np
        data = np.frombuffer((text or "").encode(), np.uint8) if self.rank == 0 else None
        n = np.array([0 if data is None else data.size], np.int64)
        self.comm.Bcast(n, root=0)
        buf = data.copy() if self.rank == 0 else np.empty(int(n[0]), np.uint8)
        self.comm.Bcast(buf, root=0)
        return buf.tobytes().decode()

    def identities(self):
        """[(pid, host name)] of every rank, by rank (an MPICH launcher names a dead rank by its pid)."""
        import socket

        import numpy as np
        mine = np.zeros(72, np.int64)
        host = socket.gethostname().encode()[:64]
        mine[0], mine[1] = os.getpid(), len(host)
        mine[8:8 + len(host)] = np.frombuffer(host, np.uint8)
        every = np.empty((self.size, 72), np.int64)
        self.comm.Allgather(mine, every)
        return [(int(row[0]), bytes(row[8:8 + int(row[1])].astype(np.uint8)).decode(errors="replace"))
                for row in every]

    def barrier(self):
        self.comm.Barrier()

    def abort(self, code=1):
        sys.stderr.flush()
        self.comm.Abort(code)


def nccl_id_is_bytes(cupy):
    """True when this CuPy's NCCL unique id is `bytes` (CuPy 14 and later); CuPy 13 gives and takes
    a tuple of 128 small integers (C chars) instead."""
    return int(cupy.__version__.split(".")[0]) >= 14


def nccl_unique_id(nccl, comm, rank, as_bytes):
    """Rank 0's NCCL unique id on every rank, in the form this CuPy's NcclCommunicator takes.

    The id travels over MPI as 128 int64 values: byte values 0..255 for the `bytes` form, the
    integers themselves for the tuple form (C chars, signed or not as the platform's char is;
    every rank of a job runs on the same kind of machine), so nothing is pickled."""
    import numpy as np
    n = 128  # NCCL_UNIQUE_ID_BYTES of nccl.h (not a Python name in cupy.cuda.nccl)
    buf = np.zeros(n, np.int64)
    if rank == 0:
        uid = nccl.get_unique_id()
        if len(uid) != n:
            raise RuntimeError(f"NCCL unique id of {len(uid)} bytes, expected {n}")
        buf[:] = np.frombuffer(uid, np.uint8) if isinstance(uid, bytes) else np.asarray(uid, np.int64)
    comm.Bcast(buf, root=0)
    if as_bytes:
        return (buf & 0xFF).astype(np.uint8).tobytes()
    return tuple(int(v) for v in buf)


class NCCLWorld(MPIWorld):
    """One rank per GPU: MPI starts the ranks and hands out NCCL's id; NCCL moves the gradients
    between the GPUs (cupy.cuda.nccl), as PyTorch DDP does. The construction is tested against
    the real cupy.cuda.nccl of CuPy 13 and 14 without a GPU (tests/real_cupy); no collective has
    run across two GPUs yet (docs/gpu.md)."""
    name = "NCCL"

    def __init__(self):
        super().__init__()
        import cupy
        from cupy.cuda import nccl
        if not hasattr(nccl, "get_unique_id"):  # CuPy found no NCCL library
            raise RuntimeError("--device gpu over several ranks needs NCCL: pip install 'minidit[gpu]' "
                               "(installs nvidia-nccl-cu12 with CuPy)")
        cupy.cuda.Device(self.local_rank % cupy.cuda.runtime.getDeviceCount()).use()
        uid = nccl_unique_id(nccl, self.comm, self.rank, nccl_id_is_bytes(cupy))
        self.nccl, self.cupy = nccl, cupy
        self.ncomm = nccl.NcclCommunicator(self.size, uid, self.rank)
        self._dtypes = {"float32": nccl.NCCL_FLOAT32, "float64": nccl.NCCL_FLOAT64}

    def iallgather(self, send, recv):
        stream = self.cupy.cuda.get_current_stream()
        self.ncomm.allGather(send.data.ptr, recv.data.ptr, send.size, self._dtypes[send.dtype.name], stream.ptr)
        return stream

    def test(self, requests):
        pass

    def waitall(self, requests):
        for stream in requests:
            stream.synchronize()

    def allgather(self, send):
        recv = self.cupy.empty((self.size,) + tuple(send.shape), dtype=send.dtype)
        self.waitall([self.iallgather(send, recv)])
        return recv


def make_world(device="cpu"):
    """The world this process was started in: SingleProcess, or MPI/NCCL under an MPI launcher."""
    if launched_ranks() <= 1:
        return SingleProcess()
    return NCCLWorld() if device == "gpu" else MPIWorld()


class ProcessGradientSum:
    """parallel.GradientSum across ranks: each group of gradients (a block's, as dit_backward's
    sink yields them) is all-gathered once this rank's W shards have all produced it, and
    `total` adds every rank's shards in global shard order."""

    def __init__(self, world, local_shards):
        self.world, self.W = world, local_shards
        self._parts, self._pending, self._requests, self._order = {}, {}, [], []
        self._lock = threading.Lock()

    def add(self, local, grads):
        with self._lock:
            key = tuple(grads)
            if local == 0:  # the order the backward yields groups in, for a deterministic total
                self._order.append(key)
            parts = self._parts.setdefault(key, {})
            parts[local] = grads
            if len(parts) < self.W:
                return
            del self._parts[key]
            xp = get_array_module(grads[key[0]])
            send = xp.concatenate([parts[i][k].ravel() for i in range(self.W) for k in key])
            recv = xp.empty((self.world.size * self.W, send.size // self.W), dtype=send.dtype)
            self._requests.append(self.world.iallgather(send, recv))
            self._pending[key] = ([(k, parts[0][k].shape) for k in key], recv)
            self.world.test(self._requests)

    def fail(self):
        pass  # a failing rank aborts the whole world (train.py); nothing waits here

    @property
    def total(self):
        self.world.waitall(self._requests)
        total = {}
        for key in self._order:
            shapes, recv = self._pending[key]
            off = 0
            for k, shape in shapes:
                n = math.prod(shape)
                g = recv[0, off:off + n].reshape(shape).copy()
                for s in range(1, recv.shape[0]):
                    g += recv[s, off:off + n].reshape(shape)
                total[k] = g
                off += n
        return total


class FollowerRunDir:
    """What a rank other than 0 has of the run directory: rank 0 owns it (lock, log, checkpoints,
    grids); the others only read the checkpoint to resume from, which rank 0 named."""

    def __init__(self, out, resume_from=None):
        from pathlib import Path
        self.path = Path(out)
        self.resume_from = Path(resume_from) if resume_from else None
        self.last_checkpoint = None

    def start(self, step=0):
        pass

    def close(self):
        pass

    def log(self, record):
        pass

    def save(self, step, meta, **groups):
        return None

    def plot_loss(self, *a, **k):
        return None

    def diverged(self, step, stats):
        from ..cli import TrainingDiverged
        return TrainingDiverged(f"loss became {stats['loss']} at step {step}")

    def interrupted(self, e, step):
        return type(e)(f"interrupted at step {step}")

    def write_failed(self, e, what):
        return e


def run_ranks(args, world, train, log=print):
    """A training command's run() on every rank of an MPI job: rank 0 checks and owns the run
    directory and tells the others; `train(args, run_dir, log, world)` then runs on every rank,
    and a failure on any rank stops every rank at once, naming the rank."""
    from threadpoolctl import threadpool_limits

    from .rundir import RunDir
    # BLAS gets this rank's share of the machine's CPUs, or K ranks' BLAS threads fight over them
    threadpool_limits(max(1, available_cpus() // world.local_size), user_api="blas")
    ids = world.identities()
    (log if world.rank == 0 else (lambda *a, **k: None))("MPI ranks: " + ", ".join(f"{r} = pid {pid} on {host}" for r, (pid, host) in enumerate(ids))
        + " (mpirun names a killed rank by its pid)")
    if world.rank == 0:
        try:
            run_dir = RunDir(args.out, args.resume, args.overwrite, args.keep)
        except BaseException as e:
            world.bcast_text(json.dumps({"error": str(e)}))
            raise
        world.bcast_text(json.dumps({"resume_from": str(run_dir.resume_from) if args.resume else None}))
    else:
        state = json.loads(world.bcast_text())
        if "error" in state:  # rank 0 reports it
            raise SystemExit(2)
        run_dir = FollowerRunDir(args.out, state["resume_from"])
    try:
        return train(args, run_dir, log if world.rank == 0 else (lambda *a, **k: None), world)
    except BaseException as e:
        why = str(e) or type(e).__name__
        print(f"minidit: rank {world.rank} of {world.size} stopped: {why}; stopping every rank"
              + (f" (newest checkpoint: {run_dir.last_checkpoint})" if world.rank == 0 else ""),
              file=sys.stderr, flush=True)
        run_dir.close()
        time.sleep(0.5)  # mpirun forwards the line before the abort takes the job down (lost without it under load)
        world.abort(2 if isinstance(e, (ValueError, OSError)) else 1)
        raise
    finally:
        run_dir.close()
