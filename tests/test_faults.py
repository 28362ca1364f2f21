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
from conftest import summary

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
        deadline = time.time() + 120  # past the imports: this run has written a checkpoint of its own
        while p.poll() is None and time.time() < deadline and {c.name for c in checkpoints_of(run)} <= before:
            time.sleep(0.01)
        time.sleep(rnd.uniform(0.0, 0.6))  # then somewhere in the steps and writes (about 25 ms a step)
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
    summary("run folders", f"{killed} kill -9 during a {steps}-step run with a checkpoint every step: 0 checkpoints lost, "
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
    # stopped before its first checkpoint (every 1000 steps): nothing to --resume, nothing kept
    assert first.returncode == 143 and "terminated at step" in err and "before the first checkpoint" in err, err
    assert "--resume" not in err and not (tmp_path / "run").exists()


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


# ---- issue 28: a user's folder is never touched, the lock is exclusive, nothing is left by a run
# that fails before its first checkpoint, and resume says what it does

_RACE = r"""
import json, sys, time
from minidit.training.rundir import take_lock
folders, start = json.loads(sys.argv[1]), float(sys.argv[2])
won = []
for i, folder in enumerate(folders):
    while time.time() < start + 0.05 * i:  # both processes spin up to the same instant
        pass
    try:
        take_lock(folder)
        won.append(i)
    except FileExistsError:
        pass
print(json.dumps(won))
"""


def test_two_runs_taking_the_lock_at_the_same_instant_never_both_get_it(tmp_path):
    """30 tries, two processes started together race for each folder's lock; in every other
    folder the lock of a process that no longer exists waits, so the stale-lock takeover races too."""
    import socket
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(dead.stdout)
    folders = []
    for i in range(30):
        folder = tmp_path / f"run{i}"
        folder.mkdir()
        if i % 2:
            (folder / ".minidit.lock").write_text(json.dumps({"pid": dead_pid, "host": socket.gethostname()}))
        folders.append(str(folder))
    start = time.time() + 3.0  # both processes are past their imports by then
    procs = [subprocess.Popen([sys.executable, "-c", _RACE, json.dumps(folders), str(start)], env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results.append(set(json.loads(out)))
    both = results[0] & results[1]
    neither = set(range(30)) - results[0] - results[1]
    summary("run folders", f"lock race: 30 tries (15 over a stale lock), two processes each: both ran {len(both)} times, "
          f"neither {len(neither)}; wins {len(results[0])} / {len(results[1])}")
    assert not both and not neither
    holders = [json.loads((Path(f) / ".minidit.lock").read_text())["pid"] for f in folders]
    assert holders == [procs[0].pid if i in results[0] else procs[1].pid for i in range(30)]


@pytest.mark.slow
def test_two_train_commands_started_together_one_runs(tmp_path):
    """End to end: two `python -m minidit.train` on one new folder, started together: one
    trains, the other stops with one line, and log.jsonl holds every step once (the 30 tries
    are the lock race above: a try here costs seconds)."""
    for i in range(1):
        out = tmp_path / f"run{i}"
        procs = [subprocess.Popen(_train_cmd(out, "--steps", "3", "--workers", "1"), env=_env(),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        done = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
        codes = sorted(c for c, _ in done)
        assert codes == [0, 2], done
        loser = [err for c, err in done if c == 2][0].strip()
        assert len(loser.splitlines()) == 1 and ("in use by another run" in loser or "already holds a run" in loser)
        assert [json.loads(line)["step"] for line in open(out / "log.jsonl")] == [1, 2, 3]


def test_a_run_that_fails_before_its_first_checkpoint_leaves_nothing(tmp_path, capsys):
    out = tmp_path / "new" / "deeper" / "run"
    rc = train.main(TINY + ["--workers", "1", "--out", str(out), "--steps", "20", "--ckpt-every", "10",
                            "--lr", "1e12"])  # diverges within a few steps
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "loss became" in err and "nothing is kept" in err, err
    assert "RuntimeWarning" not in err and list(tmp_path.iterdir()) == []  # not even an empty folder
    (tmp_path / "empty").mkdir()  # a folder that was there stays, empty as it was
    rc = train.main(TINY + ["--workers", "1", "--out", str(tmp_path / "empty"), "--steps", "20", "--lr", "1e12"])
    assert rc == 1 and list((tmp_path / "empty").iterdir()) == []


def test_sigterm_before_the_first_checkpoint_does_not_advise_resume(tmp_path, monkeypatch, capsys):
    from minidit.cli import Terminated
    real, calls = train.train_step, {"n": 0}

    def terminated_at_step_3(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Terminated("terminated (SIGTERM)")
        return real(*a, **k)

    monkeypatch.setattr(train, "train_step", terminated_at_step_3)
    rc = train.main(TINY + ["--workers", "1", "--out", str(tmp_path / "run"), "--steps", "10", "--ckpt-every", "5"])
    err = capsys.readouterr().err.strip()
    assert rc == 143 and len(err.splitlines()) == 1 and "before the first checkpoint" in err, err
    assert "--resume" not in err and not (tmp_path / "run").exists()
    calls["n"] = -100  # after a checkpoint, --resume is advised, and it works
    monkeypatch.setattr(train, "train_step", real)
    assert train.main(TINY + ["--workers", "1", "--out", str(tmp_path / "run"), "--steps", "4",
                              "--ckpt-every", "2"]) == 0
    capsys.readouterr()


def test_a_full_disk_while_logging_is_one_line_exit_1_and_leaves_no_half_line(tmp_path, monkeypatch, capsys):
    import minidit.training.rundir as rundir
    real = rundir.os.write

    def write(fd, data):
        if data.startswith(b'{"step": 3,'):  # the disk fills up half-way through step 3's record
            real(fd, data[:10])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(rundir.os, "write", write)
    rc = train.main(TINY + ["--workers", "1", "--out", str(tmp_path / "run"), "--steps", "6", "--ckpt-every", "2"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "No space left on device" in err, err
    assert "log.jsonl" in err and "step_0000002.npz" in err  # the file it failed on, the checkpoint kept
    assert [json.loads(line)["step"] for line in open(tmp_path / "run" / "log.jsonl")] == [1, 2]
    assert not (tmp_path / "run" / ".minidit.lock").exists()


def test_resume_skips_a_damaged_newest_checkpoint_and_names_it(tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main(TINY + ["--workers", "1", "--out", str(out), "--steps", "2", "--ckpt-every", "1",
                              "--keep", "3", "--no-sample-grid"]) == 0
    newest = out / "checkpoints" / "step_0000002.npz"
    newest.write_bytes(newest.read_bytes()[:1000])  # cut short
    capsys.readouterr()
    assert train.main(TINY + ["--workers", "1", "--out", str(out), "--steps", "3", "--ckpt-every", "1",
                              "--keep", "3", "--resume", "--no-sample-grid"]) == 0
    said = capsys.readouterr().out
    assert "skipped" in said and "step_0000002.npz" in said and "resumed" in said and "at step 1" in said, said
    assert (out / "checkpoints" / "step_0000002.npz.broken").exists()  # kept, under another name
    assert [p.name for p in checkpoints_of(out)] == ["step_0000001.npz", "step_0000002.npz", "step_0000003.npz"]
    assert [json.loads(line)["step"] for line in open(out / "log.jsonl")] == [1, 2, 3]


def test_resume_names_every_flag_that_changed(tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main(TINY + ["--workers", "1", "--out", str(out), "--steps", "1", "--no-sample-grid"]) == 0
    capsys.readouterr()
    assert train.main(TINY + ["--workers", "1", "--out", str(out), "--steps", "2", "--resume", "--lr", "2e-3",
                              "--ema-decay", "0.99", "--no-flip", "--no-sample-grid"]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert len(notes) == 1, notes
    for said in ("--lr 0.002 (the checkpoint's run: 0.001)", "--ema-decay 0.99", "--no-flip True",
                 "will not match an uninterrupted run"):
        assert said in notes[0], notes


def test_a_vae_named_relatively_or_by_its_shipped_name_works_from_any_folder(tmp_path, monkeypatch, capsys):
    from minidit.training.checkpoint import load_checkpoint, shipped_file
    import shutil
    monkeypatch.chdir(tmp_path)  # outside the checkout
    latent = ["--workers", "1", "--steps", "1", "--patch-size", "1", "--no-sample-grid"]
    assert train.main(TINY + latent + ["--vae", "vae_shapes32.npz", "--out", "a"]) == 0  # the shipped VAE
    meta, _ = load_checkpoint(tmp_path / "a" / "checkpoints" / "step_0000001.npz")
    assert meta["vae"] == str(shipped_file("vae_shapes32.npz"))  # recorded by its absolute path
    (tmp_path / "data").mkdir()
    shutil.copy(shipped_file("vae_shapes32.npz"), tmp_path / "data" / "vae_shapes32.npz")
    assert train.main(TINY + latent + ["--vae", "data/vae_shapes32.npz", "--out", "b"]) == 0  # the file here
    meta, _ = load_checkpoint(tmp_path / "b" / "checkpoints" / "step_0000001.npz")
    assert meta["vae"] == str(tmp_path / "data" / "vae_shapes32.npz")
    capsys.readouterr()


@pytest.mark.slow
def test_ctrl_c_in_the_first_moments_is_one_line(tmp_path):
    """Ctrl-C while minidit, NumPy and the rest load: no traceback, at most one line, nothing
    written. A signal that lands while the interpreter itself still starts (its `site` module
    and runpy, before any line of minidit runs) is Python's own business and is not counted."""
    t0 = time.time()
    subprocess.run([sys.executable, "-c", "pass"], env=_env(), check=True)
    startup = time.time() - t0
    counted = 0
    for delay in (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8):
        p = subprocess.Popen(_train_cmd(tmp_path / "run", "--steps", "100000", "--ckpt-every", "100000"), env=_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        time.sleep(startup + delay)
        p.send_signal(signal.SIGINT)
        try:
            _, err = p.communicate(timeout=120)
        finally:
            p.kill()  # never leave a run behind that ignored the interrupt (the assertions below fail then)
            p.wait()
        if "init_import_site" in err or ("Traceback" in err and "minidit" not in err):
            continue  # the interpreter's own start-up, before the first line of minidit
        counted += 1
        assert p.returncode in (130, -signal.SIGINT), (delay, p.returncode, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) <= 1, (delay, err)
        assert not (tmp_path / "run").exists()
    assert counted >= 3


_STRING_CODE_COMMAND = """
import argparse, sys
from minidit.cli import run_command

def run(args):
    print("ready", flush=True)
    exec("import time\\nfor _ in range(600): time.sleep(0.05)")  # code compiled from a string, as namedtuple's

sys.exit(run_command(argparse.ArgumentParser(prog="string_code"), run, plots=False))
"""


def test_ctrl_c_inside_code_compiled_from_a_string_still_exits_130(tmp_path):
    """CPython 3.11 remembers a KeyboardInterrupt that left code run by exec() of a string as
    unhandled, and a `python -m` program then kills itself with SIGINT at exit (status -2), even
    though the command caught the interrupt and printed its line. Lazy imports (matplotlib's
    first plot at the first checkpoint) create namedtuples and dataclasses that way, so Ctrl-C
    at that moment hit it."""
    (tmp_path / "string_code.py").write_text(_STRING_CODE_COMMAND)
    env = _env()
    env["PYTHONPATH"] = str(tmp_path) + os.pathsep + env["PYTHONPATH"]
    p = subprocess.Popen([sys.executable, "-m", "string_code"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert p.stdout.readline().strip() == "ready"
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, (p.returncode, err)
    assert err.strip() == "string_code: interrupted", err


@pytest.mark.slow
def test_an_output_name_the_terminal_cannot_print_does_not_fail_the_run(tmp_path):
    out = tmp_path / "résumé_run"
    env = dict(_env(), PYTHONIOENCODING="ascii")
    r = subprocess.run(_train_cmd(out, "--steps", "2", "--workers", "1"), env=env, capture_output=True, text=True,
                       encoding="utf-8", timeout=300)
    assert r.returncode == 0, r.stderr
    assert "r\\xe9sum\\xe9_run" in r.stdout and checkpoints_of(out)
