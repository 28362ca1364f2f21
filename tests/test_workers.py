"""Process workers on one machine (`--worker-kind processes`, minidit/training/local_world.py): the
same bits as the same number of threads, resume across the two kinds, the collectives of the
world itself, and the faults the run directory promises: Ctrl-C and SIGTERM stop every process and
keep the newest checkpoint, kill -9 of the command takes its workers with it, and a worker that
dies stops the run with one line naming it."""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import same_arrays as _same, run_log as _log

from minidit.commands import train
from minidit.training.checkpoint import checkpoints_of, load_checkpoint
from minidit.training.local_world import LocalWorld, WorkerLost

pytestmark = pytest.mark.xdist_group("workers")

if not hasattr(os, "fork"):
    pytest.skip("process workers need fork", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model", "minidit-Tiny/4", "--depth", "1", "--hidden-size", "16", "--num-heads", "2",
        "--image-size", "8", "--num-images", "64", "--batch-size", "8", "--lr", "1e-3", "--ema-decay", "0.9",
        "--log-every", "1", "--sample-steps", "2", "--no-progress", "--workers", "2", "--no-sample-grid"]
PROCESSES = ["--worker-kind", "processes"]


def _arrays(run, step=None):
    ckpt = checkpoints_of(run)[-1] if step is None else Path(run) / "checkpoints" / f"step_{step:07d}.npz"
    meta, groups = load_checkpoint(ckpt)
    return meta, {f"{g}/{k}": v for g, group in groups.items() for k, v in group.items()}


def test_two_processes_equal_two_threads_bit_for_bit_and_resume_across_kinds(tmp_path, capsys):
    """4 steps with 2 threads and with 2 processes (checkpoints at 2 and 4), then each kind resumed
    from the other's step 2: every run ends on the same bits, and no resume calls itself inexact.
    (One test, so that the four runs are made once even where pytest-xdist splits the module.)"""
    for kind in ("threads", "processes"):
        assert train.main(TINY + ["--worker-kind", kind, "--steps", "4", "--ckpt-every", "2", "--keep", "2",
                                  "--out", str(tmp_path / kind)]) == 0
    meta_t, w_t = _arrays(tmp_path / "threads")
    meta_p, w_p = _arrays(tmp_path / "processes")
    assert meta_p["step"] == meta_t["step"] == 4
    assert (meta_p["workers"], meta_p["ranks"]) == (meta_t["workers"], meta_t["ranks"]) == (2, 1)
    assert meta_p["args"]["worker_kind"] == "processes"
    _same(w_t, w_p)  # weights, EMA, AdamW moments, the data order: every array, bit for bit
    assert _log(tmp_path / "threads") == _log(tmp_path / "processes")  # losses and gradient norms too
    for first, then in (("processes", "threads"), ("threads", "processes")):
        run = tmp_path / f"{first}-then-{then}"
        shutil.copytree(tmp_path / first, run)
        (run / "checkpoints" / "step_0000004.npz").unlink()  # as if stopped after step 2
        capsys.readouterr()
        assert train.main(TINY + ["--worker-kind", then, "--steps", "4", "--ckpt-every", "2", "--resume",
                                  "--out", str(run)]) == 0
        out = capsys.readouterr().out
        assert "resumed" in out and "note" not in out, out
        _same(w_t, _arrays(run)[1])
        assert _log(tmp_path / then) == _log(run)


def _collectives(world):
    """Every collective of the interface; returns what this rank saw (a worker raises if wrong)."""
    r, k = world.rank, world.size
    seen = world.allgather(np.arange(5, dtype=np.float32) + 10 * r)
    expected = np.stack([np.arange(5, dtype=np.float32) + 10 * s for s in range(k)])
    send = np.full(6, r, np.float64)
    recv = np.empty((k * 2, 3))
    reqs = [world.iallgather(send, recv)]
    world.test(reqs)
    world.waitall(reqs)
    text = world.bcast_text("ünïcode text" if r == 0 else None)
    ids = world.identities()
    world.barrier()
    ok = (np.array_equal(seen, expected) and np.array_equal(recv.reshape(k, 6), np.repeat(np.arange(k), 6).reshape(k, 6))
          and text == "ünïcode text" and [pid for pid, _ in ids][r] == os.getpid() and len(set(ids)) == k)
    if not ok:
        raise AssertionError(f"rank {r}: wrong collective results")
    return ids


def test_the_collectives_of_three_processes():
    world = LocalWorld.start(3, _collectives)
    try:
        ids = _collectives(world)
        assert [pid for pid, _ in ids] == world.pids()
    except BaseException:
        world.stop()
        raise
    world.close(timeout=30)
    assert [p.exitcode for p in world._procs.values()] == [0, 0]  # no worker saw a wrong result


def test_a_failing_worker_is_named_with_its_reason():
    def worker(world):
        world.allgather(np.zeros(3))
        raise RuntimeError("disk on fire")

    world = LocalWorld.start(2, worker)
    try:
        world.allgather(np.zeros(3))
        with pytest.raises(WorkerLost, match=r"worker process 1 of 2 \(pid \d+\) stopped: disk on fire"):
            world.allgather(np.zeros(3))
    finally:
        world.stop()


def test_bad_input_is_one_line_before_any_worker_exists(tmp_path, monkeypatch, capsys):
    def no_fork(*a, **k):
        raise AssertionError("a worker process was started for a run that cannot start")

    monkeypatch.setattr(LocalWorld, "start", no_fork)
    with pytest.raises(SystemExit) as e:
        train.main(TINY + ["--worker-kind", "fibers", "--out", str(tmp_path / "run")])
    assert e.value.code == 2 and "invalid choice: 'fibers'" in capsys.readouterr().err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("a user's file")
    with pytest.raises(SystemExit) as e:
        train.main(TINY + PROCESSES + ["--out", str(tmp_path / "mine")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2
    assert len(err.splitlines()) == 1 and "notes.txt" in err, err
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]
    assert not (tmp_path / "run").exists()


# ---- the command as a user runs it: signals and kill -9

LINUX_PS = sys.platform.startswith("linux") and shutil.which("ps") is not None  # ps --ppid


def _env():
    env = dict(os.environ, MPLBACKEND="Agg")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("MINIDIT_DEVICE", None)
    return env


def _start(run, **kw):
    """A long training with 2 worker processes, once it has written its first checkpoint:
    (process, the workers' pids)."""
    p = subprocess.Popen([sys.executable, "-m", "minidit.train", *TINY, *PROCESSES, "--steps", "100000",
                          "--ckpt-every", "3", "--out", str(run)], cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, **kw)
    deadline = time.time() + 120
    while not checkpoints_of(run) and p.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert p.poll() is None, p.communicate()
    children = _processes(f"--ppid={p.pid}")
    assert len(children) == 1, children  # the one worker besides the command itself
    return p, children


def _processes(*select):
    """Pids of the live (not zombie) training processes `ps` selects (a forked worker runs the
    command's own command line; Python's multiprocessing helpers, where it starts them, do not)."""
    r = subprocess.run(["ps", "-o", "pid=,stat=,args=", *select], capture_output=True, text=True)
    rows = [line.split(None, 2) for line in r.stdout.splitlines()]
    return [int(row[0]) for row in rows if not row[1].startswith("Z") and "minidit.train" in row[2]]


def _gone(pids, within=10.0):
    deadline = time.time() + within
    while time.time() < deadline:
        if not _processes("-p", ",".join(map(str, pids))):
            return True
        time.sleep(0.1)
    return False


def _whole_checkpoint(run, killed=False):
    """The newest checkpoint loads; no temporary file is left, unless the command was killed
    in the middle of a write (the next run in the folder removes it)."""
    meta, groups = load_checkpoint(checkpoints_of(run)[-1])
    assert meta["step"] % 3 == 0 and all(np.isfinite(v).all() for v in groups["model"].values())
    assert killed or not [f for f in Path(run).rglob("*") if ".tmp" in f.name]


@pytest.mark.skipif(not LINUX_PS, reason="watches the processes with Linux's ps")
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_and_sigterm_stop_every_process_and_keep_the_checkpoint(tmp_path, sig, code):
    run = tmp_path / "run"
    # in a session of its own, as a terminal's foreground job: Ctrl-C reaches every process of
    # the group; SIGTERM (a job scheduler's stop) only the command
    p, children = _start(run, start_new_session=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        if sig == signal.SIGINT:
            os.killpg(p.pid, sig)
        else:
            p.send_signal(sig)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "the newest checkpoint is" in lines[0] and "--resume" in lines[0], err
    assert _gone(children, within=2.0), "a worker process outlived the command"
    assert not (run / ".minidit.lock").exists()
    _whole_checkpoint(run)


@pytest.mark.skipif(not LINUX_PS, reason="watches the processes with Linux's ps")
def test_kill_9_of_the_command_takes_its_workers_with_it(tmp_path):
    run = tmp_path / "run"
    p, children = _start(run)
    p.kill()
    p.communicate(timeout=60)
    assert _gone(children), "a worker process outlived the command killed with kill -9"
    _whole_checkpoint(run, killed=True)


@pytest.mark.skipif(not LINUX_PS, reason="watches the processes with Linux's ps")
def test_a_killed_worker_stops_the_run_with_one_line_naming_it(tmp_path):
    run = tmp_path / "run"
    p, children = _start(run)
    try:
        os.kill(children[0], signal.SIGKILL)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"worker process 1 of 2 (pid {children[0]}) was killed by SIGKILL" in lines[0], err
    assert "the newest checkpoint is" in lines[0] and "Traceback" not in err
    assert not (run / ".minidit.lock").exists()
    _whole_checkpoint(run)


def test_on_a_vaes_latents_the_workers_inherit_the_encoded_data(tmp_path, capsys):
    """The latents are encoded once, before the workers are forked, and give the threads' bits."""
    from minidit.latent import autoencoder
    autoencoder._ENCODED.clear()  # the table of an earlier test in this process would be reused
    latent = ["--vae", "vae_shapes32.npz", "--patch-size", "1", "--steps", "2", "--ckpt-every", "2"]
    for kind in ("processes", "threads"):
        assert train.main(TINY + latent + ["--worker-kind", kind, "--out", str(tmp_path / kind)]) == 0
    said = capsys.readouterr().out
    assert "before the worker processes start" in said and "kept from the previous run" in said, said
    _same(_arrays(tmp_path / "threads")[1], _arrays(tmp_path / "processes")[1])
