"""Data-parallel training over processes on one machine, without MPI: the world of distributed.py
(the interface of MPIWorld) built from the standard library, so that `--worker-kind processes`
gets what `mpirun -n K` gets on one machine, one Python interpreter per worker, with nothing to
install.

    python -m minidit.train --workers 2 --worker-kind processes ...

The command's own process is rank 0; it forks K - 1 worker processes (multiprocessing's "fork"
start method), each of which runs the same training (train.py) on its shards of every batch and
exchanges gradients through ProcessGradientSum, exactly as MPI ranks do, so K processes give the
same bits as K threads and as `mpirun -n K` (tests/test_workers.py). Rank 0 alone writes.

How the gradients travel: one Unix socket pair between rank 0 and each worker. An all-gather is
each worker sending its part to rank 0, which sends every worker the parts of the others. A
thread per process moves the bytes (socket calls release Python's lock), so the exchange of one
block's gradients overlaps the backward of the next, as with MPI's Iallgather. Nothing is
pickled: the sockets carry raw array bytes behind a small header (the collective's number and
its length), which also catches a rank that runs out of step.

Faults: a worker that dies (kill -9) or fails closes its socket; rank 0 notices at the next
exchange and stops the run naming it (WorkerLost). Workers die with rank 0 even on kill -9
(Linux's PR_SET_PDEATHSIG; elsewhere at their next exchange, when the socket closes), and they
ignore Ctrl-C, which rank 0 handles for everyone, stopping them before it exits.

One module of about 370 lines: the world's collectives, the bytes they put on the sockets, and
the lives of the processes at either end are one protocol, read together.
"""
import ctypes
import os
import queue
import signal
import socket
import struct
import sys
import threading

import numpy as np

_HEADER = struct.Struct("<qq")  # (the collective's number, the payload's length in bytes)
_FAILED = -1  # a worker's last message: its error, in place of a collective's number


class WorkerLost(RuntimeError):
    """A process of the world ended or failed while the others needed it; the message names it."""


class _Request:
    def __init__(self):
        self.done = threading.Event()
        self.result = None


def _signal_name(code):
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def _die_with(parent):
    """Ask Linux to kill this process when its parent dies (PR_SET_PDEATHSIG = 1), then make sure
    the parent did not die before that: a worker never outlives the command."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # no prctl: the closed socket stops the worker instead
            pass
    if os.getppid() != parent:
        os._exit(1)


class LocalWorld:
    """K processes on this machine, rank 0 being the command. Build it with LocalWorld.start."""
    name = "local"

    def __init__(self, rank, size, socks, procs=None):
        self.rank, self.size = rank, size
        self.local_rank, self.local_size = rank, size
        self._socks = socks  # rank 0: {r: socket to worker r}; a worker: {0: socket to rank 0}
        self._procs = procs or {}  # rank 0: {r: multiprocessing.Process}
        self._queue = queue.Queue()
        self._seq = 0
        self._seq_lock = threading.Lock()
        self._error = None
        self._thread = threading.Thread(target=self._serve, name="minidit-exchange", daemon=True)
        self._thread.start()

    # ---- start and stop

    @classmethod
    def start(cls, size, child):
        """Fork size - 1 worker processes. Worker r runs child(its world) and exits (status 0 when
        child returns, 1 when it fails, after telling rank 0 why); the caller gets rank 0's world.
        Ctrl-C and SIGTERM are held back while forking, so that a worker is never caught between
        its birth and its own signal settings."""
        import multiprocessing
        try:
            ctx = multiprocessing.get_context("fork")
        except ValueError:
            raise ValueError("--worker-kind processes needs the 'fork' start method (Linux, macOS); "
                             "use --worker-kind threads here") from None
        parent, socks, procs = os.getpid(), {}, {}
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            try:
                for r in range(1, size):
                    mine, theirs = socket.socketpair()
                    inherited = list(socks.values()) + [mine]  # the other workers' sockets: not theirs to keep
                    p = ctx.Process(target=_worker_main, args=(child, r, size, theirs, inherited, parent, held),
                                    name=f"minidit-worker-{r}", daemon=True)
                    p.start()
                    theirs.close()  # so that the worker's death closes the connection
                    socks[r], procs[r] = mine, p
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, held)  # a signal held back is raised here
            return cls(0, size, socks, procs)
        except BaseException:
            for p in procs.values():
                p.kill()
                p.join()
            raise

    def pids(self):
        """[pid] of every rank, by rank (rank 0's side only)."""
        return [os.getpid()] + [self._procs[r].pid for r in range(1, self.size)]

    def stop(self):
        """Rank 0: kill every worker at once (they hold nothing that needs saving) and wait for them."""
        for p in self._procs.values():
            if p.exitcode is None:
                p.kill()
        for p in self._procs.values():
            p.join()
        self._close_sockets()

    def close(self, timeout=60):
        """Rank 0, at the end of a run: wait for the workers to finish their last step, then stop
        any that did not."""
        for p in self._procs.values():
            p.join(timeout)
        self.stop()

    def _close_sockets(self):
        self._queue.put(None)
        for s in self._socks.values():
            try:
                s.close()
            except OSError:
                pass

    def abort(self, code=1):
        if self.rank == 0:
            self.stop()
            raise SystemExit(code)
        os._exit(code)

    # ---- the collectives of MPIWorld

    def iallgather(self, send, recv):
        """Start gathering every rank's `send` (the same size on every rank) into recv, rank by
        rank along recv's first axis; the request completes in waitall."""
        if not isinstance(send, np.ndarray):
            raise TypeError("process workers run on the CPU (NumPy arrays); on a GPU use mpirun")
        if recv.nbytes != send.nbytes * self.size:
            raise ValueError(f"all-gather of {send.nbytes} bytes into {recv.nbytes}, expected {send.nbytes * self.size}")
        send = np.ascontiguousarray(send)
        return self._submit("gather", memoryview(send).cast("B"), memoryview(recv).cast("B"))

    def test(self, requests):
        pass  # the exchange thread moves the bytes on its own

    def waitall(self, requests):
        for req in requests:
            while not req.done.wait(1.0):  # woken up now and then, so that Ctrl-C is seen at once
                pass
            if isinstance(req.result, BaseException):
                raise req.result

    def allgather(self, send):
        recv = np.empty((self.size,) + tuple(send.shape), dtype=send.dtype)
        self.waitall([self.iallgather(send, recv)])
        return recv

    def bcast_text(self, text=None):
        """Rank 0's string on every rank (UTF-8 bytes, nothing unpickled)."""
        req = self._submit("bcast", (text or "").encode() if self.rank == 0 else None, None)
        self.waitall([req])
        return req.result.decode()

    def identities(self):
        """[(pid, host name)] of every rank, by rank."""
        pids = self.allgather(np.array([os.getpid()], np.int64))
        return [(int(p), socket.gethostname()) for p in pids[:, 0]]

    def barrier(self):
        self.allgather(np.zeros(1, np.uint8))

    # ---- the exchange thread

    def _submit(self, kind, send, recv):
        req = _Request()
        with self._seq_lock:  # numbered in the order of the calls, the same order on every rank
            self._seq += 1
            self._queue.put((kind, self._seq, send, recv, req))
        return req

    def fail(self, why):
        """A worker's last word: send `why` to rank 0 after what is already queued; False if it
        could not be delivered within a few seconds."""
        req = _Request()
        self._queue.put(("failed", _FAILED, why.encode(errors="replace"), None, req))
        return req.done.wait(5.0) and req.result is None

    def _serve(self):
        while True:
            op = self._queue.get()
            if op is None:
                return
            kind, seq, send, recv, req = op
            try:
                if self._error is not None:
                    raise self._error
                if kind == "failed":
                    self._write(0, seq, [send])
                elif kind == "bcast":
                    req.result = self._bcast(seq, send)
                elif self.rank == 0:
                    self._gather_root(seq, send, recv)
                else:
                    self._gather_worker(seq, send, recv)
            except BaseException as e:  # every later request fails the same way
                self._error = self._error or (e if isinstance(e, WorkerLost) else WorkerLost(str(e)))
                req.result = self._error
            req.done.set()

    def _gather_root(self, seq, send, recv):
        n = len(send)
        recv[:n] = send
        for r in range(1, self.size):
            self._read(r, seq, [recv[r * n:(r + 1) * n]])
        for r in range(1, self.size):
            self._write(r, seq, [recv[:r * n], recv[(r + 1) * n:]])

    def _gather_worker(self, seq, send, recv):
        n, r = len(send), self.rank
        self._write(0, seq, [send])
        self._read(0, seq, [recv[:r * n], recv[(r + 1) * n:]])
        recv[r * n:(r + 1) * n] = send

    def _bcast(self, seq, data):
        if self.rank == 0:
            for r in range(1, self.size):
                self._write(r, seq, [data])
            return data
        header = self._read_exact(0, bytearray(_HEADER.size))
        got, n = _HEADER.unpack(header)
        self._check(0, seq, got, n, None)
        return bytes(self._read_exact(0, bytearray(n)))

    def _write(self, r, seq, parts):
        try:
            self._socks[r].sendall(_HEADER.pack(seq, sum(len(p) for p in parts)))
            for p in parts:
                self._socks[r].sendall(p)
        except OSError as e:
            raise self._lost(r, e) from None

    def _read(self, r, seq, views):
        got, n = _HEADER.unpack(self._read_exact(r, bytearray(_HEADER.size)))
        self._check(r, seq, got, n, sum(len(v) for v in views))
        for v in views:
            self._read_exact(r, v)

    def _check(self, r, seq, got, n, expected):
        if got == _FAILED and self.rank == 0:
            why = bytes(self._read_exact(r, bytearray(n))).decode(errors="replace")
            raise WorkerLost(f"worker process {r} of {self.size} (pid {self._procs[r].pid}) stopped: {why}")
        if got != seq or (expected is not None and n != expected):
            raise WorkerLost(f"rank {r} is out of step (collective {got} of {n} bytes, expected {seq} of "
                             f"{expected} bytes): the ranks no longer run the same program")

    def _read_exact(self, r, view):
        view = memoryview(view).cast("B")
        got = 0
        try:
            while got < len(view):
                k = self._socks[r].recv_into(view[got:])
                if k == 0:
                    raise ConnectionResetError("connection closed")
                got += k
        except OSError as e:
            raise self._lost(r, e) from None
        return view

    def _lost(self, r, e):
        """The WorkerLost error for a connection to rank r that broke (its process ended)."""
        if self.rank > 0:
            return WorkerLost(f"rank 0 is gone ({e})")
        p = self._procs[r]
        p.join(2.0)  # it has usually ended already: its exit status says how
        if p.exitcode is None:
            how = f"closed its connection ({e})"
        elif p.exitcode < 0:
            how = f"was killed by {_signal_name(p.exitcode)}"
        else:
            how = f"exited with status {p.exitcode}"
        return WorkerLost(f"worker process {r} of {self.size} (pid {p.pid}) {how}")


def _worker_main(child, rank, size, sock, inherited, parent, held):
    """A forked worker's whole life: its own signal settings, then child(world), then exit
    without running the command's exit handlers (they belong to rank 0)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: rank 0 handles it
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the command's handler: a worker just ends
    signal.pthread_sigmask(signal.SIG_SETMASK, held)
    _die_with(parent)
    for s in inherited:
        s.close()
    code = 0
    try:
        world = LocalWorld(rank, size, {0: sock})
        try:
            child(world)
        except WorkerLost:
            code = 1  # rank 0 is gone or stopping everyone: nothing to add
        except BaseException as e:
            code = 1
            why = str(e) or type(e).__name__
            if not world.fail(why):  # rank 0 could not be told: say it here
                print(f"minidit: worker process {rank} of {size} stopped: {why}", file=sys.stderr, flush=True)
    finally:
        os._exit(code)


def run_processes(args, count, train, log=print, prepare=None):
    """The training command's run() over `count` processes on this machine: rank 0 checks and
    owns the run directory (before any worker exists, so bad input is reported as by one process),
    calls prepare(count) (work to do once, whose results the workers inherit), forks the workers,
    and `train(args, run_dir, log, world)` runs in every process; workers get a FollowerRunDir and
    no log. Any failure or interrupt on rank 0 stops the workers before the command's one line."""
    from threadpoolctl import threadpool_limits

    from .checkpoint import load_checkpoint
    from .distributed import FollowerRunDir
    from .parallel import available_cpus
    from .rundir import RunDir
    run_dir = RunDir(args.out, args.resume, args.overwrite, args.keep, log=log)
    try:
        if args.resume and args.workers == 0:  # the count decides how the gradients are summed: keep it
            count = int(load_checkpoint(run_dir.resume_from)[0].get("workers", count))
        if count <= 1:
            return train(args, run_dir, log)
        if prepare is not None:
            prepare(count)
        resume_from = run_dir.resume_from

        def worker(world):
            threadpool_limits(max(1, available_cpus() // count), user_api="blas")
            train(args, FollowerRunDir(args.out, resume_from), lambda *a, **k: None, world)

        with threadpool_limits(max(1, available_cpus() // count), user_api="blas"):
            world = LocalWorld.start(count, worker)
            try:
                log("worker processes: " + ", ".join(f"{r} = pid {pid}" for r, pid in enumerate(world.pids())))
                result = train(args, run_dir, log, world)
                world.close()  # the workers end with their last step
                return result
            except BaseException:
                world.stop()
                raise
    finally:
        run_dir.close()
