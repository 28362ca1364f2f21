"""Faults during a run: kill -9 at random moments of a training with a checkpoint every step (no
checkpoint lost, no temporary file left after the next start, and the resumed run ends bit for
bit where an unbroken one does), a full disk, a second run on the same folder, weights that stop
being finite although the loss did not, and Ctrl-C / SIGTERM during sampling and training.

MINIDIT_KILLS and MINIDIT_KILL_STEPS set the kill -9 test's kills and training steps (default 3
and 60; the figure in the README was measured with 24 and 400)."""
import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from minidit.commands import train
from minidit.training.checkpoint import checkpoints_of, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model", "minidit-Tiny/4", "--depth", "1", "--hidden-size", "16", "--num-heads", "2",
        "--image-size", "8", "--num-images", "64", "--batch-size", "8", "--lr", "1e-3",
        "--ema-decay", "0.9", "--log-every", "1", "--sample-steps", "2", "--no-progress", "--workers", "2"]


def _env():
    env = dict(os.environ, MPLBACKEND="Agg")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _train_cmd(out, *extra):
    return [sys.executable, "-m", "minidit.train", *TINY, "--out", str(out), *extra]


def _temporary_files(folder):
    return [p for p in Path(folder).rglob("*") if p.is_file() and ".tmp" in p.name]


@pytest.mark.slow
def test_kill_9_at_random_moments_loses_nothing_and_resume_is_exact(tmp_path):
    kills, steps = int(os.environ.get("MINIDIT_KILLS", "3")), int(os.environ.get("MINIDIT_KILL_STEPS", "60"))
    straight = tmp_path / "straight"
    subprocess.run(_train_cmd(straight, "--steps", str(steps), "--ckpt-every", "1", "--keep", "3"),
                   env=_env(), check=True, capture_output=True, timeout=600)
    run = tmp_path / "killed"
    rnd = random.Random(0)
    seen_tmp, lost, killed = 0, 0, 0
    for _ in range(kills):
        before = {p.name for p in checkpoints_of(run)}
        resume = ["--resume"] if before else []
        p = subprocess.Popen(_train_cmd(run, "--steps", str(steps), "--ckpt-every", "1", "--keep", "3", *resume),
                             env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rnd.uniform(1.5, 4.0))  # past the imports, somewhere in the steps and writes
        killed += p.poll() is None
        p.send_signal(signal.SIGKILL)
        p.wait()
        seen_tmp += len(_temporary_files(run))
        for ckpt in checkpoints_of(run):  # every checkpoint on disk is whole
            meta, groups = load_checkpoint(ckpt)
            lost += not all(np.isfinite(v).all() for v in groups["model"].values())
        if checkpoints_of(run) and checkpoints_of(run)[-1].name == f"step_{steps:07d}.npz":
            break
    resume = ["--resume"] if checkpoints_of(run) else []
    r = subprocess.run(_train_cmd(run, "--steps", str(steps), "--ckpt-every", "1", "--keep", "3", *resume),
                       env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert _temporary_files(run) == [] and not (run / ".minidit.lock").exists() and lost == 0
    _, a = load_checkpoint(straight / "checkpoints" / f"step_{steps:07d}.npz")
    _, b = load_checkpoint(run / "checkpoints" / f"step_{steps:07d}.npz")
    for group in ("model", "ema", "opt_m", "opt_v"):
        for k in a[group]:
            assert np.array_equal(a[group][k], b[group][k]), (group, k)
    logged = [json.loads(line)["step"] for line in open(run / "log.jsonl")]
    assert logged == list(range(1, steps + 1))  # each step once, in order
    assert killed >= min(kills, 2), "the runs finished before they could be killed"
    print(f"{killed} kill -9 during a {steps}-step run with a checkpoint every step: 0 checkpoints lost, "
          f"{seen_tmp} temporary files found after the kills, 0 left after the next start, resume bit-exact")


def _args(tmp_path, *extra, out="run"):
    return train.build_parser().parse_args(TINY + ["--workers", "1", "--out", str(tmp_path / out), *extra])


def test_a_full_disk_stops_the_run_with_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, capsys):
    import minidit.training.checkpoint as ck
    real, calls = ck.np.savez, {"n": 0}

    def savez(f, **arrays):
        calls["n"] += 1
        if calls["n"] == 3:  # the third checkpoint: the disk is full half-way through
            f.write(b"half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(f, **arrays)

    monkeypatch.setattr(ck.np, "savez", savez)
    rc = train.main(TINY + ["--workers", "1", "--out", str(tmp_path / "run"), "--steps", "6", "--ckpt-every", "2"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "No space left on device" in err, err
    assert "step_0000006.npz" in err and "step_0000004.npz" in err  # the file it failed on, the one kept
    assert [p.name for p in checkpoints_of(tmp_path / "run")] == ["step_0000002.npz", "step_0000004.npz"]
    assert _temporary_files(tmp_path / "run") == [] and not (tmp_path / "run" / ".minidit.lock").exists()
    load_checkpoint(tmp_path / "run" / "checkpoints" / "step_0000004.npz")


@pytest.mark.filterwarnings("ignore:invalid value encountered")  # the NaN arithmetic is the point
@pytest.mark.parametrize("broken_at, says", [(4, "the weights became non-finite by step 4"),
                                              (3, "loss became nan at step 4")])
def test_weights_that_break_while_the_loss_is_finite_are_never_checkpointed(tmp_path, monkeypatch, capsys,
                                                                            broken_at, says):
    """With a huge learning rate the loss is finite at the step whose update breaks the weights:
    a checkpoint of that step is refused (broken at 4, a checkpoint step), or the next step's loss
    stops the run (broken at 3); either way the run names the newest checkpoint, which is finite."""
    real = train.train_step
    calls = {"n": 0}

    def breaks(params, *a, **k):
        stats = real(params, *a, **k)
        calls["n"] += 1
        if calls["n"] == broken_at:
            params["blocks.0.mlp.fc1.w"][...] = np.inf  # the update of a finite step broke them
        return stats

    monkeypatch.setattr(train, "train_step", breaks)
    rc = train.main(TINY + ["--workers", "1", "--out", str(tmp_path / "run"), "--steps", "10", "--ckpt-every", "2"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and says in err and "step_0000002.npz" in err and len(err.splitlines()) == 1, err
    assert [p.name for p in checkpoints_of(tmp_path / "run")] == ["step_0000002.npz"]
    _, g = load_checkpoint(tmp_path / "run" / "checkpoints" / "step_0000002.npz")
    assert all(np.isfinite(v).all() for group in g.values() for v in group.values())


@pytest.mark.slow
def test_a_second_run_on_the_same_folder_stops_at_once(tmp_path):
    first = subprocess.Popen(_train_cmd(tmp_path / "run", "--steps", "100000", "--ckpt-every", "1000"),
                             env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (tmp_path / "run" / ".minidit.lock").exists() and time.time() < deadline:
            time.sleep(0.1)
        t0 = time.time()
        second = subprocess.run(_train_cmd(tmp_path / "run", "--steps", "5", "--overwrite"), env=_env(),
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and f"process {first.pid}" in second.stderr, second.stderr
        assert len(second.stderr.strip().splitlines()) == 1 and time.time() - t0 < 30
        assert first.poll() is None  # the first run goes on
    finally:
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=60)
    assert first.returncode == 143 and "terminated at step" in err and "--resume" in err, err
    assert not (tmp_path / "run" / ".minidit.lock").exists()


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupt_during_sampling_stops_within_seconds_and_writes_nothing(tmp_path, sig, code):
    cmd = [sys.executable, "-m", "minidit.sample", "--ckpt", str(ROOT / "data" / "minidit_shapes32.npz"),
           "--per-class", "8", "--steps", "250", "--workers", "2", "--out", str(tmp_path / "s.png"),
           "--npz", str(tmp_path / "s.npz"), "--no-progress"]
    # Ctrl-C's default action in the child even when this test runs in the background, where the
    # shell starts every process with SIGINT ignored (and Python then keeps ignoring it)
    p = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(6)  # imports, loading, and into the sampling steps
    assert p.poll() is None, p.communicate()
    t0 = time.time()
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    waited = time.time() - t0
    assert p.returncode == code, err
    assert len(err.strip().splitlines()) == 1 and "nothing was written" in err and "Traceback" not in err, err
    assert waited < 5, waited
    assert list(tmp_path.iterdir()) == []
