"""minidit's checkpoint format (minidit.training.checkpoint): atomic writes, clear errors for files
that are not checkpoints, finding a checkpoint in a run directory or among the shipped files,
slim copies that load as float32, and load_model refusing what is not a DiT."""
import json

import numpy as np
import pytest

from minidit.model import DiT_models, init_params
from minidit.training.checkpoint import (SHIPPED_DIRS, checkpoints_of, find_checkpoint, find_vae,
                                         load_checkpoint, load_model, save_checkpoint, shipped_file,
                                         slim_checkpoint)


def test_round_trip_and_meta(tmp_path):
    path = save_checkpoint(tmp_path / "sub" / "c.npz", {"step": 3, "note": [1, 2]},
                           model={"a.w": np.arange(6.0).reshape(2, 3)}, ema={"a.w": np.ones((2, 3))})
    meta, groups = load_checkpoint(path)
    assert meta["step"] == 3 and meta["note"] == [1, 2] and meta["format"] == "minidit-checkpoint"
    assert set(groups) == {"model", "ema"} and np.array_equal(groups["model"]["a.w"], np.arange(6.0).reshape(2, 3))


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "c.npz"
    save_checkpoint(path, {"step": 1}, model={"w": np.ones(3)})

    def crash(f, **arrays):
        f.write(b"partial bytes")
        raise KeyboardInterrupt  # the process dies mid-write

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"step": 2}, model={"w": np.zeros(3)})
    meta, g = load_checkpoint(path)  # the old checkpoint is intact
    assert meta["step"] == 1 and np.array_equal(g["model"]["w"], np.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]  # no temporary file left behind


@pytest.mark.parametrize("content, hint", [
    (b"not a zip file", "not a readable minidit checkpoint"),
    (b"", "not a readable minidit checkpoint"),
])
def test_broken_files_get_a_clear_error(tmp_path, content, hint):
    (tmp_path / "x.npz").write_bytes(content)
    with pytest.raises(ValueError, match=hint):
        load_checkpoint(tmp_path / "x.npz")


def test_foreign_archives_are_named(tmp_path):
    np.savez(tmp_path / "official.npz", **{"x_embedder.proj.weight": np.zeros((2, 2))})
    with pytest.raises(ValueError, match="from_official"):
        load_checkpoint(tmp_path / "official.npz")
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(ValueError, match="single array"):
        load_checkpoint(tmp_path / "one.npy")
    np.savez(tmp_path / "other.npz", meta=np.array(json.dumps({"format": "something else"})))
    with pytest.raises(ValueError, match="format 'something else'"):
        load_checkpoint(tmp_path / "other.npz")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.npz")


def test_find_checkpoint_in_run_directories_and_shipped_files(tmp_path, monkeypatch):
    for step in (5, 10):
        save_checkpoint(tmp_path / "run" / "checkpoints" / f"step_{step:07d}.npz", {"step": step}, model={})
    assert [p.name for p in checkpoints_of(tmp_path / "run")] == ["step_0000005.npz", "step_0000010.npz"]
    assert find_checkpoint(tmp_path / "run").name == "step_0000010.npz"
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        find_checkpoint(tmp_path / "empty")
    monkeypatch.chdir(tmp_path)  # a shipped model is found by its name alone from any directory
    assert find_checkpoint("minidit_shapes32.npz") == shipped_file("minidit_shapes32.npz")
    for typo in ("data/minidit_shapes32.npz", "my_runs_typo/minidit_shapes32.npz"):  # a path is that path
        with pytest.raises(FileNotFoundError, match="give its name alone: minidit_shapes32.npz"):
            find_checkpoint(typo)
    assert shipped_file("classifier_shapes32.npz").parent in SHIPPED_DIRS
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_checkpoint("data/no_such_model.npz")
    with pytest.raises(FileNotFoundError, match="not among the files shipped"):
        shipped_file("no_such_model.npz")


def test_a_latent_checkpoints_relative_vae_path_is_found_from_any_directory(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    (run / "vae.npz").write_bytes(b"x")
    ckpt = run / "model.npz"
    monkeypatch.chdir(tmp_path)
    assert find_vae("run/vae.npz", ckpt).resolve() == (run / "vae.npz").resolve()  # relative to the cwd first
    monkeypatch.chdir("/")
    assert find_vae("vae.npz", ckpt) == run / "vae.npz"                  # then beside the checkpoint
    assert find_vae("data/vae_shapes32.npz", ckpt).exists()              # then among the shipped files
    assert str(find_vae("missing.npz", ckpt)) == "missing.npz"           # the loader names it


def test_slim_checkpoint_keeps_the_weights_in_float16_and_loads_as_float32(tmp_path):
    cfg = DiT_models["minidit-Tiny/4"](depth=1, hidden_size=16, num_heads=2)
    P = {k: v + 0.1 for k, v in init_params(cfg, seed=0).items()}
    src = save_checkpoint(tmp_path / "full.npz", {"kind": "dit", "config": cfg.to_dict(), "step": 7,
                                                   "rng": {"x": 1}, "opt_step": 7},
                          model=P, ema=P, opt_m=P, opt_v=P)
    slim = slim_checkpoint(src, tmp_path / "slim.npz")
    meta, groups = load_checkpoint(slim)
    assert set(groups) == {"model", "ema"} and "rng" not in meta and meta["slim"]["dtype"] == "float16"
    assert all(v.dtype == np.float16 for v in groups["ema"].values())
    params, cfg2, _ = load_model(slim)
    assert cfg2 == cfg and all(v.dtype == np.float32 for v in params.values())
    for k in P:
        np.testing.assert_allclose(params[k], P[k], rtol=1e-3, atol=1e-4)


def test_load_model_refuses_a_vae(tmp_path):
    save_checkpoint(tmp_path / "vae.npz", {"kind": "vae", "config": {}}, model={"w": np.zeros(1)})
    with pytest.raises(ValueError, match="holds no DiT model"):
        load_model(tmp_path / "vae.npz")
