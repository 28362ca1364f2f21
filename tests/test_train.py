"""The training command end to end on a tiny model: it learns, resumes bit for bit (its log too),
refuses to overwrite a run and overwrites only the run's own files, stops on a non-finite loss
keeping the last good checkpoint, and rejects bad arguments with status 2."""
import json
import os

import numpy as np
import pytest

from minidit.commands import train
from minidit.training.checkpoint import checkpoints_of, load_checkpoint

TINY = ["--model", "minidit-Tiny/4", "--depth", "1", "--hidden-size", "16", "--num-heads", "2",
        "--image-size", "8", "--num-images", "64", "--batch-size", "8", "--lr", "1e-3",
        "--ema-decay", "0.9", "--log-every", "1", "--sample-steps", "2", "--no-progress"]


def _args(tmp_path, *extra, out="run"):
    return train.build_parser().parse_args(TINY + ["--out", str(tmp_path / out), *extra])


def test_training_lowers_the_loss_and_writes_its_outputs(tmp_path):
    train.run(_args(tmp_path, "--steps", "100", "--ckpt-every", "50", "--lr", "3e-3", "--hidden-size", "32"), log=lambda *a: None)
    out = tmp_path / "run"
    rows = [json.loads(l) for l in open(out / "log.jsonl")]
    assert [r["step"] for r in rows] == list(range(1, 101))
    assert {"loss", "mse", "vb", "grad_norm", "steps_per_sec", "images_per_sec"} <= set(rows[0])
    first, last = np.mean([r["loss"] for r in rows[:10]]), np.mean([r["loss"] for r in rows[-10:]])
    assert last < 0.7 * first, (first, last)
    assert (out / "loss.png").exists() and (out / "samples" / "step_0000100.png").exists()
    assert [p.name for p in checkpoints_of(out)] == ["step_0000050.npz", "step_0000100.npz"]
    meta, groups = load_checkpoint(out / "checkpoints" / "step_0000100.npz")
    assert meta["step"] == 100 and set(groups) >= {"model", "ema", "opt_m", "opt_v"}
    # the EMA moved towards the weights but is not equal to them
    k = "final_layer.linear.w"
    assert not np.array_equal(groups["ema"][k], groups["model"][k]) and np.any(groups["ema"][k])


@pytest.mark.parametrize("workers", ["1", "2"])
def test_resume_is_bit_for_bit(tmp_path, workers):
    w = ["--workers", workers]
    train.run(_args(tmp_path, "--steps", "6", "--ckpt-every", "6", *w, out="straight"), log=lambda *a: None)
    train.run(_args(tmp_path, "--steps", "3", "--ckpt-every", "3", *w, out="stopped"), log=lambda *a: None)
    # resume without --workers: the run keeps the count its checkpoint recorded
    train.run(_args(tmp_path, "--steps", "6", "--ckpt-every", "3", "--resume", out="stopped"), log=lambda *a: None)
    _, a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "step_0000006.npz")
    _, b = load_checkpoint(tmp_path / "stopped" / "checkpoints" / "step_0000006.npz")
    for group in ("model", "ema", "opt_m", "opt_v"):
        for k in a[group]:
            assert np.array_equal(a[group][k], b[group][k]), (group, k)  # identical to the bit
    la = [json.loads(l)["loss"] for l in open(tmp_path / "straight" / "log.jsonl")]
    lb = [json.loads(l)["loss"] for l in open(tmp_path / "stopped" / "log.jsonl")]
    assert la == lb


@pytest.mark.parametrize("workers", ["1", "2"])
def test_muon_trains_and_resumes_bit_for_bit(tmp_path, workers):
    """--optimizer muon: Muon's momentum lives in the checkpoint's opt_m, so a stopped run resumes
    to the bit; its matrices move and their v stays zero; resuming with another optimiser is refused."""
    w = ["--optimizer", "muon", "--workers", workers]
    train.run(_args(tmp_path, "--steps", "6", "--ckpt-every", "6", *w, out="straight"), log=lambda *a: None)
    train.run(_args(tmp_path, "--steps", "3", "--ckpt-every", "3", *w, out="stopped"), log=lambda *a: None)
    train.run(_args(tmp_path, "--steps", "6", "--ckpt-every", "3", "--resume", *w, out="stopped"),
              log=lambda *a: None)
    meta, a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "step_0000006.npz")
    _, b = load_checkpoint(tmp_path / "stopped" / "checkpoints" / "step_0000006.npz")
    assert meta["args"]["optimizer"] == "muon"
    for group in ("model", "ema", "opt_m", "opt_v"):
        for k in a[group]:
            assert np.array_equal(a[group][k], b[group][k]), (group, k)
    k = "blocks.0.mlp.fc1.w"
    assert np.any(a["opt_m"][k]) and not np.any(a["opt_v"][k])  # Muon's: momentum only
    assert np.any(a["opt_v"]["blocks.0.mlp.fc1.b"])  # AdamW's
    with pytest.raises(ValueError, match="--optimizer muon, not adamw"):
        train.run(_args(tmp_path, "--steps", "9", "--resume", "--optimizer", "adamw", out="stopped"),
                  log=lambda *a: None)


def test_muon_rms_sets_the_size_of_muons_step_only(tmp_path, monkeypatch):
    """--muon-rms scales Muon's step linearly and leaves the AdamW half alone; the run records it.
    With adaLN-Zero and the zeroed final layer the blocks' matrices get no gradient before step 3, so
    after three steps all three runs have taken one Muon step from the same weights: 0.2 -> 0.4 moves
    a matrix by what 0.4 -> 0.6 does."""
    w = {}
    for rms in ("0.2", "0.4", "0.6"):
        train.run(_args(tmp_path, "--steps", "3", "--ckpt-every", "3", "--optimizer", "muon", "--muon-rms", rms,
                        out=rms), log=lambda *a: None)
        meta, g = load_checkpoint(tmp_path / rms / "checkpoints" / "step_0000003.npz")
        assert meta["args"]["muon_rms"] == float(rms)
        w[rms] = g["model"]
    k = "blocks.0.mlp.fc1.w"
    step1, step2 = w["0.4"][k] - w["0.2"][k], w["0.6"][k] - w["0.4"][k]
    assert np.abs(step1).max() > 1e-5
    np.testing.assert_allclose(step2, step1, rtol=1e-3, atol=1e-6)
    assert np.array_equal(w["0.2"]["blocks.0.mlp.fc1.b"], w["0.6"]["blocks.0.mlp.fc1.b"])
    # a resumed run may change it: one note names the change, and the new size is the one used
    from minidit.training.optim import Muon
    notes, sizes, real_step = [], [], Muon.step
    monkeypatch.setattr(Muon, "step", lambda self, *a, **k: (sizes.append(self.rms), real_step(self, *a, **k)))
    train.run(_args(tmp_path, "--steps", "4", "--ckpt-every", "4", "--resume", "--optimizer", "muon", "--muon-rms",
                    "0.4", out="0.2"), log=notes.append)
    assert any("--muon-rms 0.4 (the checkpoint's run: 0.2)" in n for n in notes), notes
    assert sizes == [0.4]
    # from the command line a Muon run records the default it used, so that a resume can compare it
    assert train.main(TINY + ["--out", str(tmp_path / "default"), "--steps", "1", "--optimizer", "muon"]) == 0
    assert load_checkpoint(checkpoints_of(tmp_path / "default")[-1])[0]["args"]["muon_rms"] == 0.2


def test_a_run_from_before_the_optimizer_flag_resumes_only_with_adamw(tmp_path):
    """A checkpoint whose recorded arguments have no "optimizer" (written before the flag) was
    trained with AdamW: resuming it with Muon is refused, with AdamW it goes on."""
    from minidit.training.checkpoint import save_checkpoint
    train.run(_args(tmp_path, "--steps", "2", "--ckpt-every", "2"), log=lambda *a: None)
    path = tmp_path / "run" / "checkpoints" / "step_0000002.npz"
    meta, groups = load_checkpoint(path)
    del meta["args"]["optimizer"]
    save_checkpoint(path, meta, **groups)
    with pytest.raises(ValueError, match="--optimizer adamw, not muon"):
        train.run(_args(tmp_path, "--steps", "4", "--resume", "--optimizer", "muon"), log=lambda *a: None)
    train.run(_args(tmp_path, "--steps", "4", "--resume"), log=lambda *a: None)
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "step_0000004.npz")[0]["step"] == 4


def test_latent_training_resumes_bit_for_bit(tmp_path):
    """DiT on the latents of a (tiny, briefly trained) VAE: the pre-encoded posteriors make the
    same run whether it is stopped and resumed or not."""
    from minidit.latent import train_vae
    vae_args = ["--image-size", "8", "--num-images", "64", "--batch-size", "8", "--base-channels", "4",
                "--num-groups", "2", "--ch-mult", "1,2", "--z-channels", "2", "--steps", "2",
                "--scale-images", "16", "--eval-images", "8", "--no-progress", "--out", str(tmp_path / "vae")]
    train_vae.run(train_vae.build_parser().parse_args(vae_args), log=lambda *a: None)
    v = ["--vae", str(tmp_path / "vae" / "vae.npz"), "--patch-size", "2", "--workers", "2"]
    logs = []
    train.run(_args(tmp_path, "--steps", "4", "--ckpt-every", "4", *v, out="straight"), log=logs.append)
    train.run(_args(tmp_path, "--steps", "2", "--ckpt-every", "2", *v, out="stopped"), log=logs.append)
    train.run(_args(tmp_path, "--steps", "4", "--ckpt-every", "2", "--resume", *v, out="stopped"), log=logs.append)
    # the posteriors are encoded once per process (minidit.experiments runs dozens of trainings)
    encoded = [line for line in logs if line.startswith("encoded ")]
    assert len(encoded) == 3 and ["kept from the previous run" in line for line in encoded] == [False, True, True]
    vae = tmp_path / "vae" / "vae.npz"
    os.utime(vae, ns=(vae.stat().st_atime_ns, vae.stat().st_mtime_ns + 10**9))  # a rewritten VAE file
    train.run(_args(tmp_path, "--steps", "1", *v, out="after"), log=logs.append)
    assert "kept" not in [line for line in logs if line.startswith("encoded ")][-1]
    ma, a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "step_0000004.npz")
    _, b = load_checkpoint(tmp_path / "stopped" / "checkpoints" / "step_0000004.npz")
    assert ma["config"]["in_channels"] == 2 and ma["config"]["input_size"] == 4  # latents, not pixels
    for group in ("model", "ema", "opt_m", "opt_v"):
        for k in a[group]:
            assert np.array_equal(a[group][k], b[group][k]), (group, k)


def test_no_sample_grid_writes_checkpoints_and_no_grid(tmp_path):
    train.run(_args(tmp_path, "--steps", "2", "--ckpt-every", "1", "--no-sample-grid"), log=lambda *a: None)
    assert len(checkpoints_of(tmp_path / "run")) == 2
    assert not list((tmp_path / "run").glob("samples/*.png"))


def test_existing_run_is_not_overwritten(tmp_path, capsys):
    train.run(_args(tmp_path, "--steps", "2"), log=lambda *a: None)
    with pytest.raises(SystemExit) as e:
        train.main(TINY + ["--out", str(tmp_path / "run"), "--steps", "2"])
    assert e.value.code == 2 and "already holds a run" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a bad argument deletes nothing
        train.main(TINY + ["--out", str(tmp_path / "run"), "--steps", "2", "--overwrite", "--data", "/no/such"])
    assert checkpoints_of(tmp_path / "run")
    (tmp_path / "run" / "notes.txt").write_text("mine")  # a user's file in the run folder
    with pytest.raises(SystemExit) as e:
        train.main(TINY + ["--out", str(tmp_path / "run"), "--steps", "2", "--overwrite"])
    assert e.value.code == 2 and "notes.txt" in capsys.readouterr().err
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine" and checkpoints_of(tmp_path / "run")
    (tmp_path / "run" / "notes.txt").unlink()
    train.run(_args(tmp_path, "--steps", "2", "--overwrite", "--ckpt-every", "1", "--keep", "5"), log=lambda *a: None)
    assert [p.name for p in checkpoints_of(tmp_path / "run")] == ["step_0000001.npz", "step_0000002.npz"]


def test_a_run_killed_between_log_and_checkpoint_logs_each_step_once(tmp_path, monkeypatch):
    """Killed after logging step 5 but before its next checkpoint (step 6), then resumed from
    step 3: log.jsonl holds steps 1..8 once each, in order, and the plot is drawn from it."""
    from minidit.training.rundir import RunDir
    real_log = RunDir.log

    def dies_after_step_5(self, record):
        real_log(self, record)
        if record["step"] == 5:
            raise KeyboardInterrupt  # kill -9 stand-in

    monkeypatch.setattr(RunDir, "log", dies_after_step_5)
    with pytest.raises(KeyboardInterrupt):
        train.run(_args(tmp_path, "--steps", "8", "--ckpt-every", "3"), log=lambda *a: None)
    monkeypatch.setattr(RunDir, "log", real_log)
    steps = [json.loads(l)["step"] for l in open(tmp_path / "run" / "log.jsonl")]
    assert steps == [1, 2, 3, 4, 5] and [p.name for p in checkpoints_of(tmp_path / "run")] == ["step_0000003.npz"]
    train.run(_args(tmp_path, "--steps", "8", "--ckpt-every", "3", "--resume"), log=lambda *a: None)
    steps = [json.loads(l)["step"] for l in open(tmp_path / "run" / "log.jsonl")]
    assert steps == list(range(1, 9))


def test_checkpoints_more_often_than_log_lines(tmp_path):
    """The loss plot at a checkpoint that comes before the first log record draws nothing."""
    args = _args(tmp_path, "--steps", "4", "--ckpt-every", "1")
    args.log_every = 3
    train.run(args, log=lambda *a: None)
    steps = [json.loads(l)["step"] for l in open(tmp_path / "run" / "log.jsonl")]
    assert steps == [3, 4] and (tmp_path / "run" / "loss.png").exists()


def test_nan_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    real = train.train_step
    calls = {"n": 0}

    def poisoned(params, *a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            params["final_layer.linear.b"][...] = np.nan  # corrupt the weights: the loss turns NaN
        return real(params, *a, **k)

    monkeypatch.setattr(train, "train_step", poisoned)
    rc = train.main(TINY + ["--out", str(tmp_path / "run"), "--steps", "10", "--ckpt-every", "4"])
    err = capsys.readouterr().err
    assert rc == 1 and "at step 5" in err and "step_0000004.npz" in err
    assert [p.name for p in checkpoints_of(tmp_path / "run")] == ["step_0000004.npz"]
    _, g = load_checkpoint(tmp_path / "run" / "checkpoints" / "step_0000004.npz")
    assert all(np.isfinite(v).all() for v in g["model"].values())


@pytest.mark.parametrize("argv,msg", [
    (["--steps", "0"], "--steps must be positive"),
    (["--lr", "-1"], "--lr must be positive"),
    (["--ema-decay", "1.5"], "--ema-decay must be in"),
    (["--model", "DiT-Q/3"], "unknown --model"),
    (["--data", "/no/such/folder"], "unknown dataset"),
    (["--resume"], "holds no checkpoint"),
    (["--hidden-size", "18"], "hidden_size=18"),
    (["--batch-size", "1000"], "batch_size 1000"),
    (["--workers", "-1"], "--workers must be >= 0"),
    (["--optimizer", "sgd"], "--optimizer: invalid choice"),
    (["--optimizer", "muon", "--muon-rms", "0"], "--muon-rms must be positive"),
    (["--muon-rms", "0.5"], "--muon-rms sizes Muon's step; --optimizer adamw has none"),
])
def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys, argv, msg):
    with pytest.raises(SystemExit) as e:
        train.main(TINY + ["--out", str(tmp_path / "bad"), *argv])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and msg in err and len(err.splitlines()) == 1, err
    assert not checkpoints_of(tmp_path / "bad")


def test_lr_schedule_resumes_bit_for_bit_and_ends_at_the_final_rate(tmp_path, monkeypatch):
    """With a warm-up and a cosine decay the rate is a function of the step and of --steps, so a
    run stopped half-way (Ctrl-C) and resumed with the same command equals the straight run."""
    sched = ["--lr-schedule", "cosine", "--warmup", "2", "--lr-final", "0.1", "--steps", "6", "--ckpt-every", "3"]
    train.run(_args(tmp_path, *sched, out="straight"), log=lambda *a: None)
    real, calls = train.train_step, [0]

    def stop_at_4(*a, **k):
        calls[0] += 1
        if calls[0] == 4:
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(train, "train_step", stop_at_4)
    with pytest.raises(KeyboardInterrupt, match="interrupted at step 3"):
        train.run(_args(tmp_path, *sched, out="stopped"), log=lambda *a: None)
    monkeypatch.setattr(train, "train_step", real)
    train.run(_args(tmp_path, *sched, "--resume", out="stopped"), log=lambda *a: None)
    _, a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "step_0000006.npz")
    _, b = load_checkpoint(tmp_path / "stopped" / "checkpoints" / "step_0000006.npz")
    for group in ("model", "ema", "opt_m", "opt_v"):
        for k in a[group]:
            assert np.array_equal(a[group][k], b[group][k]), (group, k)
    lrs = [json.loads(line)["lr"] for line in open(tmp_path / "straight" / "log.jsonl")]
    assert lrs[:2] == pytest.approx([0.5e-3, 1e-3]) and lrs[-1] == pytest.approx(1e-4)  # warm-up, then down to 0.1 lr
    assert all(x > y for x, y in zip(lrs[1:], lrs[2:]))
