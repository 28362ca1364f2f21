"""The sampling command: PNG grid and ADM-format .npz from a checkpoint, reproducible by seed,
and clear errors (status 2, one line) for bad class ids, guidance, counts and foreign files."""
import numpy as np
import pytest

from minidit.commands import sample, train

TINY = ["--model", "minidit-Tiny/4", "--depth", "1", "--hidden-size", "16", "--num-heads", "2",
        "--image-size", "8", "--num-images", "32", "--batch-size", "8", "--steps", "2",
        "--sample-steps", "2", "--no-progress"]


pytestmark = pytest.mark.xdist_group("sample")  # its module-scoped fixtures are built once, on one worker

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train.run(train.build_parser().parse_args(TINY + ["--out", str(out)]), log=lambda *a: None)
    return out


def test_sample_writes_grid_and_adm_npz(run_dir, tmp_path):
    png, npz = tmp_path / "s.png", tmp_path / "s.npz"
    rc = sample.main(["--ckpt", str(run_dir), "--classes", "0,3,9", "--per-class", "2", "--steps", "3",
                      "--out", str(png), "--npz", str(npz), "--no-progress"])
    assert rc == 0 and png.stat().st_size > 0
    z = np.load(npz)
    assert z["arr_0"].dtype == np.uint8 and z["arr_0"].shape == (6, 8, 8, 3)  # NHWC
    np.testing.assert_array_equal(z["arr_1"], [0, 0, 3, 3, 9, 9])


def test_generate_is_reproducible_and_samplers_differ(run_dir):
    params, cfg, _ = sample.load_model(run_dir)
    a = sample.generate(params, cfg, [1, 2], num_steps=4, seed=5)
    b = sample.generate(params, cfg, [1, 2], num_steps=4, seed=5)
    c = sample.generate(params, cfg, [1, 2], num_steps=4, seed=5, sampler="ddim")
    np.testing.assert_array_equal(a, b)
    assert a.shape == (2, 3, 8, 8) and not np.array_equal(a, c)


@pytest.mark.parametrize("argv,msg", [
    (["--classes", "10"], "class id 10 is outside [0, 10)"),
    (["--classes", "-1"], "class id -1"),
    (["--cfg-scale", "0.5"], "--cfg-scale must be >= 1"),
    (["--per-class", "0"], "--per-class must be positive"),
    (["--steps", "0"], "--steps must be positive"),
])
def test_bad_arguments(run_dir, tmp_path, capsys, argv, msg):
    with pytest.raises(SystemExit) as e:
        sample.main(["--ckpt", str(run_dir), "--out", str(tmp_path / "x.png"), "--no-progress", *argv])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and msg in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "x.png").exists()


def test_foreign_checkpoint_gets_a_hint(tmp_path, capsys):
    np.savez(tmp_path / "official.npz", **{"x_embedder.proj.weight": np.zeros((2, 2))})
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    for name, hint in (("official.npz", "from_official"), ("junk.npz", "not a readable minidit checkpoint")):
        with pytest.raises(SystemExit) as e:
            sample.main(["--ckpt", str(tmp_path / name), "--no-progress"])
        assert e.value.code == 2 and hint in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sample.main(["--ckpt", str(tmp_path / "missing"), "--no-progress"])
    assert "does not exist" in capsys.readouterr().err
