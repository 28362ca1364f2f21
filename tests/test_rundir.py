"""The run directory every training command shares (minidit.training.rundir): it refuses to reuse a
run by accident, --overwrite removes only a run's own files, a resumed run keeps only the log
records up to its checkpoint, checkpoints rotate, and a log cut short by a kill still reads."""
import json

import pytest

from minidit.training.checkpoint import checkpoints_of
from minidit.training.rundir import RunDir
from minidit.training.viz import read_log


def _run_with_checkpoints(path, steps, logged):
    rd = RunDir(path, keep=10, overwrite=path.exists()).start()
    for s in range(1, logged + 1):
        rd.log({"step": s, "loss": 1.0 / s})
    for s in steps:
        rd.save(s, {"kind": "test"}, model={})
    return rd


def test_requests_are_checked_against_the_disk(tmp_path):
    with pytest.raises(ValueError, match="contradict"):
        RunDir(tmp_path / "a", resume=True, overwrite=True)
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume"):
        RunDir(tmp_path / "a", resume=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        RunDir(tmp_path / "file")
    _run_with_checkpoints(tmp_path / "run", [2], logged=2)
    with pytest.raises(FileExistsError, match="--resume to continue it or --overwrite"):
        RunDir(tmp_path / "run")
    assert RunDir(tmp_path / "run", resume=True).resume_from.name == "step_0000002.npz"
    assert not (tmp_path / "a").exists()  # checking creates nothing


def test_overwrite_removes_a_runs_files_and_refuses_a_folder_with_others(tmp_path):
    run = tmp_path / "run"
    _run_with_checkpoints(run, [1, 2], logged=2).close()
    (run / "samples").mkdir()
    (run / "samples" / "step_0000002.png").write_bytes(b"png")
    (run / "vae.npz").write_bytes(b"x")
    (run / "checkpoints" / ".step_0000003.npz.abc.tmp.npz").write_bytes(b"half")  # a killed write
    rd = RunDir(run, overwrite=True, outputs=("vae.npz",))
    assert checkpoints_of(run)  # nothing is deleted before start(): the command validates first
    rd.start()
    rd.close()
    assert sorted(p.name for p in run.iterdir()) == []
    _run_with_checkpoints(run, [1], logged=1).close()
    (run / "my_notes.txt").write_text("keep me")
    (run / "checkpoints" / "best.npz").write_bytes(b"mine")  # not a name a run writes
    with pytest.raises(FileExistsError, match=r"did not write \(checkpoints/, my_notes.txt\)"):
        RunDir(run, overwrite=True)
    assert (run / "my_notes.txt").read_text() == "keep me" and (run / "checkpoints" / "best.npz").exists()
    with pytest.raises(FileExistsError, match="did not write"):
        RunDir(tmp_path, overwrite=True)  # --out . --overwrite in a project folder


def test_a_second_run_on_the_folder_stops_at_once_and_a_stale_lock_is_taken_over(tmp_path):
    import json
    import os
    import socket
    import subprocess
    import sys
    first = RunDir(tmp_path / "run").start()
    assert json.loads((tmp_path / "run" / ".minidit.lock").read_text())["pid"] == os.getpid()
    first.close()
    assert not (tmp_path / "run").exists()  # a run that wrote no checkpoint leaves nothing
    (tmp_path / "run").mkdir()
    # another process holds the folder
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "run" / ".minidit.lock").write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname()}))
        with pytest.raises(FileExistsError, match=f"process {sleeper.pid}"):
            RunDir(tmp_path / "run")
    finally:
        sleeper.kill()
        sleeper.wait()
    rd = RunDir(tmp_path / "run").start()  # its process is gone: the lock is stale and taken over
    assert json.loads((tmp_path / "run" / ".minidit.lock").read_text())["pid"] == os.getpid()
    rd.close()


def test_resume_keeps_the_log_up_to_its_checkpoint(tmp_path):
    run = tmp_path / "run"
    _run_with_checkpoints(run, [3], logged=5)  # killed after logging step 5, checkpoint at 3
    rd = RunDir(run, resume=True).start(3)
    assert [r["step"] for r in read_log(rd.log_path)] == [1, 2, 3]
    rd.log({"step": 4, "loss": 0.25})
    assert [r["step"] for r in read_log(rd.log_path)] == [1, 2, 3, 4]
    fresh = tmp_path / "fresh"  # a folder with a log but no checkpoint: a new run starts it over
    _run_with_checkpoints(fresh, [], logged=4)
    assert read_log(RunDir(fresh).start().log_path) == []


def test_checkpoints_rotate_and_the_plot_waits_for_a_log(tmp_path):
    rd = RunDir(tmp_path / "run", keep=2).start()
    assert rd.plot_loss("loss") is None  # no log record yet: nothing to draw, no error
    for s in (1, 2, 3):
        rd.save(s, {"kind": "test"}, model={})
    assert [p.name for p in checkpoints_of(rd.path)] == ["step_0000002.npz", "step_0000003.npz"]
    assert rd.last_checkpoint.name == "step_0000003.npz"
    rd.log({"step": 3, "loss": 0.5, "mse": 0.4})
    assert rd.plot_loss("loss").exists()


def test_the_loss_plot_is_redrawn_at_most_every_few_seconds_and_always_at_the_end(tmp_path, monkeypatch):
    import minidit.training.rundir as rundir
    rd = RunDir(tmp_path / "run").start()
    rd.log({"step": 1, "loss": 0.5, "mse": 0.4})
    first = rd.plot_loss("loss")
    assert first is not None and first.exists()  # the first checkpoint's plot is drawn
    drawn = first.stat().st_mtime_ns
    rd.log({"step": 2, "loss": 0.4, "mse": 0.3})
    assert rd.plot_loss("loss") is None and first.stat().st_mtime_ns == drawn  # too soon: kept as it was
    assert rd.plot_loss("loss", final=True) == first  # the last step is always drawn
    monkeypatch.setattr(rundir, "PLOT_EVERY_S", 0.0)
    rd.log({"step": 3, "loss": 0.3, "mse": 0.2})
    assert rd.plot_loss("loss") == first  # once the interval has passed, drawn again


def test_a_log_line_cut_short_by_a_kill_is_skipped(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text(json.dumps({"step": 1}) + "\n" + '{"step": 2, "lo')
    assert read_log(log) == [{"step": 1}]
    log.write_text('{"step": 1\n' + json.dumps({"step": 2}) + "\n")
    with pytest.raises(ValueError, match="line 1"):
        read_log(log)
