"""Training over MPI ranks on localhost (issue 19): K ranks equal one process with K worker threads
bit for bit, resume across a stop, and a failed or killed rank ends the whole job within seconds,
naming the rank. Skips without the [mpi] extra (mpi4py and an MPI, e.g. the mpich wheel)."""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import same_arrays as _same, run_log as _log

from minidit.training.checkpoint import checkpoints_of, load_checkpoint

pytest.importorskip("mpi4py", reason="the [mpi] extra (mpi4py + an MPI library) is not installed")
MPIRUN = shutil.which("mpirun", path=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
if MPIRUN is None:
    pytest.skip("no mpirun on the PATH", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model", "minidit-Tiny/4", "--depth", "2", "--hidden-size", "32", "--num-heads", "2", "--image-size", "16",
        "--num-images", "64", "--batch-size", "8", "--sample-steps", "2", "--no-progress", "--log-every", "1"]


pytestmark = pytest.mark.xdist_group("mpi")  # one mpirun at a time: two at once starve each other on 2 cores

def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("MINIDIT_DEVICE", None)
    return env


def _train(args, ranks=None, check=True, timeout=180):
    cmd = ([MPIRUN, "-n", str(ranks)] if ranks else []) + [sys.executable, "-m", "minidit.train", *TINY, *args]
    r = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


def _weights(run):
    meta, groups = load_checkpoint(checkpoints_of(run)[-1])  # the newest whole one (no temporary file)
    return meta, {f"{g}/{k}": v for g in ("model", "ema") for k, v in groups[g].items()}


def test_two_ranks_equal_one_process_with_two_threads(tmp_path):
    _train(["--steps", "4", "--workers", "2", "--out", str(tmp_path / "threads")])
    r = _train(["--steps", "4", "--workers", "1", "--out", str(tmp_path / "ranks")], ranks=2)
    assert "2 MPI ranks" in r.stdout
    meta_t, w_t = _weights(tmp_path / "threads")
    meta_r, w_r = _weights(tmp_path / "ranks")
    assert meta_r["ranks"] == 2 and meta_t["ranks"] == 1
    _same(w_t, w_r)  # every weight and its EMA, bit for bit
    assert _log(tmp_path / "threads") == _log(tmp_path / "ranks")  # losses and gradient norms too


def test_resume_across_a_stop_with_the_same_ranks(tmp_path):
    _train(["--steps", "4", "--ckpt-every", "2", "--out", str(tmp_path / "whole")], ranks=2)
    _train(["--steps", "2", "--ckpt-every", "2", "--out", str(tmp_path / "split")], ranks=2)
    r = _train(["--steps", "4", "--ckpt-every", "2", "--resume", "--out", str(tmp_path / "split")], ranks=2)
    assert "resumed" in r.stdout and "note" not in r.stdout
    _same(_weights(tmp_path / "whole")[1], _weights(tmp_path / "split")[1])


def test_resume_with_another_rank_count_says_so(tmp_path):
    _train(["--steps", "2", "--out", str(tmp_path / "run")], ranks=2)
    r = _train(["--steps", "3", "--resume", "--out", str(tmp_path / "run")])
    assert "used 2 ranks (mpirun -n 2) and now 1" in r.stdout


def test_a_failing_rank_stops_every_rank_and_names_itself(tmp_path):
    """Rank 1 raises at its seventh step (a patched train_step, so the library carries no test hook)."""
    code = ("import os, sys\n"
            "import minidit.commands.train as t\n"
            "real, calls = t.train_step, [0]\n"
            "def flaky(*a, **k):\n"
            "    calls[0] += 1\n"
            "    if os.environ.get('PMI_RANK', os.environ.get('OMPI_COMM_WORLD_RANK')) == '1' and calls[0] == 7:\n"
            "        raise RuntimeError('disk on fire')\n"
            "    return real(*a, **k)\n"
            "t.train_step = flaky\n"
            "sys.exit(t.main(sys.argv[1:]))\n")
    t0 = time.perf_counter()
    r = subprocess.run([MPIRUN, "-n", "2", sys.executable, "-c", code, *TINY, "--steps", "50", "--ckpt-every", "2",
                        "--out", str(tmp_path / "run")], cwd=ROOT, env=_env(), capture_output=True, text=True,
                       timeout=120)
    took = time.perf_counter() - t0
    assert r.returncode != 0
    assert "rank 1 of 2 stopped: disk on fire" in r.stderr, r.stderr
    assert took < 60
    meta, _ = _weights(tmp_path / "run")  # the newest checkpoint is whole (6 may have been cut short)
    assert meta["step"] in (4, 6)


def _rank_pids(parent_pid):
    """{rank: pid} of the python processes under an mpirun."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            env = (d / "environ").read_bytes().split(b"\0")
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if b"minidit.train" not in cmd or b"mpirun" in cmd.split(b"\0")[0]:
            continue
        vals = dict(e.split(b"=", 1) for e in env if b"=" in e)
        rank = vals.get(b"PMI_RANK") or vals.get(b"OMPI_COMM_WORLD_RANK")
        if rank is not None and vals.get(b"MINIDIT_TEST_JOB") == str(parent_pid).encode():
            out[int(rank)] = int(d.name)
    return out


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the ranks through /proc")
def test_a_killed_rank_ends_the_job_within_seconds(tmp_path):
    env = _env()
    env["MINIDIT_TEST_JOB"] = str(os.getpid())
    run = tmp_path / "run"
    proc = subprocess.Popen([MPIRUN, "-n", "2", sys.executable, "-m", "minidit.train", *TINY, "--steps", "100000",
                             "--ckpt-every", "5", "--out", str(run)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not list((run / "checkpoints").glob("step_*.npz")):
            time.sleep(0.2)
        pids = _rank_pids(os.getpid())
        assert 1 in pids, f"rank 1 not found: {pids}"
        os.kill(pids[1], signal.SIGKILL)
        t0 = time.perf_counter()
        out, err = proc.communicate(timeout=30)
        took = time.perf_counter() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    print(f"\nkilled rank 1: the job ended {took:.1f} s later with exit status {proc.returncode}")
    assert proc.returncode != 0 and took < 10
    # MPICH's launcher reports the dead process by its pid; the run's first line maps pids to ranks
    report = out + err
    assert f"1 = pid {pids[1]}" in out, out[:500]
    assert f"PID {pids[1]}" in report or "rank 1" in report.lower(), report[-2000:]
    meta, _ = _weights(run)  # the newest checkpoint still loads
    assert meta["step"] % 5 == 0


def test_a_batch_too_small_for_the_ranks_is_named(tmp_path):
    r = _train(["--steps", "2", "--batch-size", "1", "--out", str(tmp_path / "run")], ranks=2, check=False)
    assert r.returncode != 0
    assert "--batch-size 1 cannot be shared by 2 MPI ranks" in r.stderr, r.stderr[-1500:]
    assert "Traceback" not in r.stderr
