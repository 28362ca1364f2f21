"""The latent-diffusion VAE: posterior and whole-loss gradient checks, encode/decode shapes for
both downsampling factors, training lowers the loss, the train_vae command (bit-exact resume,
no silent overwrite, bad arguments), and the encoder/decoder objects DiT's commands load."""
import json

import numpy as np
import pytest

from conftest import gradcheck, randn
from minidit.latent import train_vae
from minidit.latent.autoencoder import (VAEConfig, decode_latents, encode_moments, init_params, load_vae_decoder,
                                 load_vae_encoder, posterior_backward, posterior_forward, vae_backward,
                                 vae_config, vae_forward)
from minidit.backend import Generator, to_numpy
from minidit.training.checkpoint import checkpoints_of, load_checkpoint, save_checkpoint
from minidit.training.optim import AdamW

TINY_CFG = VAEConfig(base_channels=4, ch_mult=(1, 2), num_groups=2, z_channels=2)


def test_posterior_gradcheck_with_clamped_log_variance(xp, rng):
    moments = randn(xp, rng, 2, 6, 2, 3)
    moments[:, 3:][0, 0, 0] = xp.asarray([25.0, -35.0, 19.0])  # above, below and inside the clamp
    eps = randn(xp, rng, 2, 3, 2, 3)

    def f(moments):
        z, kl, cache = posterior_forward(moments, eps)
        return xp.concatenate([z, kl], axis=1), cache

    def b(dout, cache):
        return (posterior_backward(dout[:, :3], dout[:, 3:], cache),)

    res = gradcheck("VAE posterior: z and KL (log-variance clamped to [-30, 20])", f, b,
                    dict(moments=moments), tol=1e-7)
    assert res.max_error < 1e-7
    _, cache = f(moments)
    dm = to_numpy(b(xp.ones((2, 6, 2, 3)), cache)[0])
    assert dm[0, 3, 0, 0] == 0 and dm[0, 3, 0, 1] == 0 and dm[0, 3, 0, 2] != 0  # no gradient past the clamp


def test_vae_loss_gradcheck_every_parameter(xp, rng):
    P = init_params(TINY_CFG, seed=1, dtype=np.float64, device="gpu" if xp is not np else "cpu")
    x, eps = randn(xp, rng, 2, 3, 8, 6), randn(xp, rng, 2, 2, 4, 3)
    f = lambda **params: vae_forward(params, TINY_CFG, x, eps, kl_weight=0.1)
    gradcheck("VAE loss, whole model (MSE + 0.1 KL), 3 entries per array", f, lambda d, c: vae_backward(d, c),
              P, tol=1e-5, num_checks=3)


@pytest.mark.parametrize("f,size", [(4, 32), (8, 64)])
def test_encode_decode_shapes(rng, f, size):
    cfg = vae_config(f, base_channels=8, num_groups=4)
    assert cfg.downsample == f
    P = init_params(cfg)
    x = rng.uniform(-1, 1, (2, 3, size, size)).astype(np.float32)
    mean, logvar = encode_moments(P, cfg, x)
    assert mean.shape == logvar.shape == (2, 4, size // f, size // f) and mean.dtype == np.float32
    assert decode_latents(P, cfg, mean).shape == (2, 3, size, size)


def test_a_few_steps_lower_the_loss():
    from minidit.training.data import load_dataset, to_model_space
    cfg = VAEConfig(base_channels=8, ch_mult=(1, 2), num_groups=4)
    P = init_params(cfg, seed=0)
    opt = AdamW(P, lr=3e-3)
    ds = load_dataset("shapes", image_size=16, n=8)
    x = to_model_space(ds.images)
    rng = Generator(0)
    losses = [train_vae.train_step(P, opt, cfg, x, rng, 1e-4)["loss"] for _ in range(30)]
    assert np.mean(losses[-5:]) < 0.4 * losses[0], losses


TINY = ["--image-size", "8", "--num-images", "32", "--batch-size", "8", "--base-channels", "4",
        "--num-groups", "2", "--ch-mult", "1,2", "--z-channels", "2", "--lr", "3e-3", "--log-every", "1",
        "--scale-images", "16", "--eval-images", "8", "--no-progress"]


def _args(tmp_path, *extra, out="run"):
    return train_vae.build_parser().parse_args(TINY + ["--out", str(tmp_path / out), *extra])


def test_train_vae_resume_is_bit_for_bit(tmp_path, monkeypatch):
    quiet = dict(log=lambda *a: None)
    train_vae.run(_args(tmp_path, "--steps", "7", "--ckpt-every", "3", out="straight"), **quiet)
    real, calls = train_vae.train_step, {"n": 0}

    def crash_at_step_5(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # the process dies after the checkpoint of step 3
        return real(*a, **k)

    monkeypatch.setattr(train_vae, "train_step", crash_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train_vae.run(_args(tmp_path, "--steps", "7", "--ckpt-every", "3", out="stopped"), **quiet)
    monkeypatch.setattr(train_vae, "train_step", real)
    train_vae.run(_args(tmp_path, "--steps", "7", "--ckpt-every", "3", "--resume", out="stopped"), **quiet)
    ma, a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "step_0000007.npz")
    mb, b = load_checkpoint(tmp_path / "stopped" / "checkpoints" / "step_0000007.npz")
    for group in ("model", "opt_m", "opt_v"):
        for k in a[group]:
            assert np.array_equal(a[group][k], b[group][k]), (group, k)  # identical to the bit
    assert ma["rng"] == mb["rng"] and ma["loader"] == mb["loader"] and ma["latent_scale"] == mb["latent_scale"]
    la = [json.loads(l)["loss"] for l in open(tmp_path / "straight" / "log.jsonl")]
    lb = [json.loads(l)["loss"] for l in open(tmp_path / "stopped" / "log.jsonl")]
    assert la == lb and len(la) == 7
    summary = json.loads((tmp_path / "straight" / "summary.json").read_text())
    assert summary["latent_scale"] > 0 and np.isfinite(summary["held_out_psnr"])
    assert (tmp_path / "straight" / "reconstructions.png").exists()


def test_load_vae_encoder_and_decoder_round_trip(tmp_path, rng):
    train_vae.run(_args(tmp_path, "--steps", "2"), log=lambda *a: None)
    path = tmp_path / "run" / "vae.npz"
    meta, groups = load_checkpoint(path)
    assert meta["kind"] == "vae" and set(groups) == {"model"}  # no optimiser state in the VAE file
    enc = load_vae_encoder(path)
    cfg, P = VAEConfig.from_dict(meta["config"]), groups["model"]
    assert enc.scale == meta["latent_scale"] and enc.latent_channels == 2 and enc.latent_size(8) == 4
    with pytest.raises(ValueError, match="divisible"):
        enc.latent_size(9)
    x = rng.uniform(-1, 1, (3, 3, 8, 8)).astype(np.float32)
    mean, logvar = encode_moments(P, cfg, x)
    np.testing.assert_allclose(enc.encode_mean(x), mean * enc.scale, rtol=1e-6)
    z1, z2 = enc.sample_latents(x, Generator(5)), enc.sample_latents(x, Generator(5))
    assert np.array_equal(z1, z2)  # all noise from the generator passed in
    g = Generator(5)
    assert not np.array_equal(enc.sample_latents(x, g), enc.sample_latents(x, g))  # a fresh sample each call
    eps = Generator(5).normal(mean.shape)
    np.testing.assert_allclose(z1, (mean + np.exp(0.5 * logvar) * eps) * enc.scale, rtol=1e-5, atol=1e-6)
    decode = load_vae_decoder(path, latent_scale=2.0)
    np.testing.assert_allclose(decode(z1), decode_latents(P, cfg, z1 / 2.0), rtol=1e-6)
    np.testing.assert_allclose(enc.decode(z1), decode_latents(P, cfg, z1 / enc.scale), rtol=1e-6)


def test_loading_something_else_is_a_clear_error(tmp_path):
    save_checkpoint(tmp_path / "dit.npz", {"step": 1, "config": {}}, model={"w": np.ones(2)})
    with pytest.raises(ValueError, match="not a VAE checkpoint"):
        load_vae_encoder(tmp_path / "dit.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable minidit checkpoint"):
        load_vae_decoder(tmp_path / "junk.npz")


def test_existing_run_is_not_overwritten(tmp_path, capsys):
    train_vae.run(_args(tmp_path, "--steps", "1"), log=lambda *a: None)
    with pytest.raises(SystemExit) as e:
        train_vae.main(TINY + ["--out", str(tmp_path / "run"), "--steps", "1"])
    assert e.value.code == 2 and "already holds a run" in capsys.readouterr().err
    train_vae.run(_args(tmp_path, "--steps", "1", "--overwrite"), log=lambda *a: None)


@pytest.mark.parametrize("argv,msg", [
    (["--steps", "0"], "--steps must be positive"),
    (["--lr", "0"], "--lr must be positive"),
    (["--kl-weight", "-1"], "--kl-weight must be"),
    (["--downsample", "3", "--ch-mult", None], "--downsample must be one of"),
    (["--ch-mult", "1,x"], "--ch-mult must be"),
    (["--num-groups", "3"], "groups"),
    (["--image-size", "9"], "not divisible"),
    (["--resume"], "holds no checkpoint"),
    (["--data", "/no/such/folder"], "unknown dataset"),
])
def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys, argv, msg):
    argv = list(argv)
    base = list(TINY)
    if None in argv:  # drop TINY's --ch-mult so that --downsample is the one read
        i = base.index("--ch-mult")
        del base[i:i + 2]
        argv = [a for a in argv if a not in ("--ch-mult", None)]
    with pytest.raises(SystemExit) as e:
        train_vae.main(base + ["--out", str(tmp_path / "bad"), *argv])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and msg in err and len(err.splitlines()) == 1, err
    assert not checkpoints_of(tmp_path / "bad")


def test_encoded_table_has_the_same_bits_whatever_the_chunk(tmp_path, monkeypatch):
    """Each image is encoded on its own (per-image products and group norms), so the chunk size of
    the table, a speed setting, changes no bit of it; nor does keeping the encoder's caches."""
    from minidit.latent import autoencoder as ae
    from minidit.latent import vae_blocks
    from minidit.training.data import make_shapes
    train_vae.run(_args(tmp_path, "--steps", "2"), log=lambda *a: None)
    enc = load_vae_encoder(tmp_path / "run" / "vae.npz")
    images = make_shapes(70, image_size=8, seed=4).images
    tables, default = [], ae.EncodedDataset.CHUNK
    assert default < len(images)  # the default chunk splits these images
    for chunk, keep in ((default, False), (7, False), (70, True)):
        monkeypatch.setattr(ae.EncodedDataset, "CHUNK", chunk)
        monkeypatch.setattr(ae, "plan_forward",
                            lambda P, plan, x, G, keep_caches=True, keep=keep: vae_blocks.plan_forward(P, plan, x, G, keep))
        tables.append(ae.EncodedDataset(enc, images))
    for t in tables[1:]:
        assert np.array_equal(t.mean, tables[0].mean) and np.array_equal(t.std, tables[0].std)


@pytest.mark.parametrize("workers", [1, 2])
def test_encoded_dataset_matches_encoding_each_batch(tmp_path, workers):
    """The once-encoded table gives the posterior sample_latents would draw for the same images,
    mirrored where the loader flipped them, with the same random draws."""
    from minidit.latent.autoencoder import EncodedDataset
    from minidit.training.data import DataLoader, make_shapes
    from minidit.training.parallel import DataParallel
    train_vae.run(_args(tmp_path, "--steps", "2"), log=lambda *a: None)
    enc = load_vae_encoder(tmp_path / "run" / "vae.npz")
    data = make_shapes(300, image_size=8, seed=3)           # more than one chunk
    with DataParallel(workers) as par:
        table = EncodedDataset(enc, data.images, par)
    loader = DataLoader(data, 40, Generator(1))
    for _ in range(9):                                      # crosses an epoch boundary
        x, _ = next(loader)
        assert loader.last_flip.any() and not loader.last_flip.all()
        got = table.sample(loader.last_index, loader.last_flip, Generator(7))
        want = enc.sample_latents(x, Generator(7))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
