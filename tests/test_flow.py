"""Flow matching (minidit.diffusion.flow): the path and its velocity, the loss's gradient in float64,
the Euler and Heun samplers against the exact flow of Gaussian data (closed form), classifier-free
guidance on a case whose answer is known, and the train/sample commands with --objective flow
(end to end, resume bit for bit, bad flags)."""
import json

import numpy as np
import pytest

from conftest import gradcheck, randn, randomised_params, tiny_dit
from minidit import backend, guidance
from minidit.backend import to_numpy
from minidit.diffusion.flow import (TIME_SCALE, LinearFlow, flow_losses, interpolate, time_grid,
                                    velocity_target)
from minidit.guidance import make_model_fn
from minidit.model import dit_apply
from minidit.commands import sample, train
from minidit.training.checkpoint import checkpoints_of, load_checkpoint
from test_train import _args


def test_path_ends_and_its_derivative_is_the_target(xp, rng):
    x0, eps = randn(xp, rng, 3, 2, 4, 4), randn(xp, rng, 3, 2, 4, 4)
    np.testing.assert_array_equal(to_numpy(interpolate(x0, eps, np.zeros(3))), to_numpy(x0))
    np.testing.assert_array_equal(to_numpy(interpolate(x0, eps, np.ones(3))), to_numpy(eps))
    t, h = np.array([0.1, 0.5, 0.93]), 1e-6
    num = (interpolate(x0, eps, t + h) - interpolate(x0, eps, t - h)) / (2 * h)  # d x_t / dt
    err = float(abs(to_numpy(num - velocity_target(x0, eps))).max())
    print(f"d x_t/dt against eps - x0: max abs error {err:.1e}")
    assert err < 1e-8


def test_flow_loss_values_and_gradient(xp, rng):
    """loss_n = mean (v_hat - (eps - x0))^2; its gradient on v_hat against central differences in
    float64, with a random upstream vector and with the batch mean (tolerance 1e-7)."""
    x0, eps, v_hat = randn(xp, rng, 3, 2, 4, 4), randn(xp, rng, 3, 2, 4, 4), randn(xp, rng, 3, 2, 4, 4)
    out = flow_losses(v_hat, x0, eps)
    want = ((to_numpy(v_hat) - (to_numpy(eps) - to_numpy(x0))) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(to_numpy(out["loss"]), want, rtol=1e-12)

    def forward(v_hat):
        return flow_losses(v_hat, x0, eps)["loss"], None

    gradcheck("flow loss (per sample)", forward,
              lambda d, c: (flow_losses(v_hat, x0, eps, dloss=d)["grad"],), dict(v_hat=v_hat), tol=1e-7)
    gradcheck("flow loss (batch mean)", lambda v_hat: (xp.reshape(forward(v_hat)[0].mean(), (1,)), None),
              lambda d, c: (flow_losses(v_hat, x0, eps)["grad"] * d[0],), dict(v_hat=v_hat), tol=1e-7,
              dout=xp.asarray([0.7]))


def test_flow_loss_refuses_variance_channels(xp, rng):
    x0 = randn(xp, rng, 2, 2, 4, 4)
    with pytest.raises(ValueError, match="velocity only"):
        flow_losses(randn(xp, rng, 2, 4, 4, 4), x0, x0)


# Data x0 ~ N(mu, s^2 I): x_t = (1 - t) x0 + t eps is Gaussian with mean (1 - t) mu and variance
# sig_t^2 = (1 - t)^2 s^2 + t^2, and the velocity E[eps - x0 | x_t = x] is linear in x:
#     v(x, t) = -mu + (t - (1 - t) s^2) / sig_t^2 (x - (1 - t) mu).
# Its flow maps the noise z at t = 1 to x0 = mu + s z at t = 0, sample by sample.
def exact_velocity(x, t, mu, s):
    sig2 = (1 - t) ** 2 * s ** 2 + t ** 2
    return -mu + (t - (1 - t) * s ** 2) / sig2 * (x - (1 - t) * mu)


def gaussian_model(mu, s):
    """A "model" that outputs the exact velocity; it is called with 999 t, as a DiT is."""
    def model_fn(x, tm):
        t = tm / TIME_SCALE
        assert np.ptp(t) == 0  # one time for the whole batch
        return exact_velocity(x, float(t[0]), mu, s)
    return model_fn


def _gaussian_problem(n=4000, s=0.5, seed=0):
    rs = np.random.default_rng(seed)
    mu = rs.uniform(-1.5, 1.5, (1, 2, 2, 2))
    z = rs.standard_normal((n, 2, 2, 2))
    return mu, s, z


def test_heun_lands_on_the_gaussian_and_euler_converges():
    mu, s, z = _gaussian_problem()
    flow, model = LinearFlow(), gaussian_model(mu, s)
    exact = mu + s * z
    x = flow.sample_loop(model, z.shape, 100, "heun", noise=z)
    err = float(abs(x - exact).max())
    mean_err = float(abs(x.mean(0) - mu[0]).max())
    var_ratio = x.var(0) / s ** 2
    print(f"Heun 100 steps: max |x - (mu + s z)| = {err:.2e}; sample mean - mu: max {mean_err:.3f} "
          f"(4 standard errors: {4 * s / np.sqrt(len(z)):.3f}); variance / s^2: {var_ratio.min():.3f}..{var_ratio.max():.3f}")
    assert err < 5e-4  # second order: about 1e-4 at 100 steps, for |x| up to about 3
    assert mean_err < 4 * s / np.sqrt(len(z))
    assert np.all(abs(var_ratio - 1) < 4 * np.sqrt(2 / len(z)))

    steps = [10, 20, 40, 80]
    errs = {m: [float(abs(flow.sample_loop(model, z.shape, n, m, noise=z) - exact).max()) for n in steps]
            for m in ("euler", "heun")}
    for m, e in errs.items():
        print(f"{m}: max error at {steps} steps: " + ", ".join(f"{v:.2e}" for v in e))
    ratios = {m: [a / b for a, b in zip(e, e[1:])] for m, e in errs.items()}
    print("error ratios when the steps double:", {m: [round(r, 2) for r in r_] for m, r_ in ratios.items()})
    assert all(1.6 < r < 2.5 for r in ratios["euler"])  # first order: halves with twice the steps
    assert all(3.2 < r < 4.8 for r in ratios["heun"])  # second order: a quarter
    assert errs["heun"][0] < errs["euler"][-1]  # Heun with 10 steps beats Euler with 80


def test_sample_loop_draws_the_same_starting_noise_as_the_gaussian_samplers():
    from minidit.backend import Generator
    seen = []

    def model(x, tm):
        seen.append(to_numpy(x).copy())
        return np.zeros_like(x)
    x = LinearFlow().sample_loop(model, (2, 1, 2, 2), 3, "euler", rng=Generator(7), dtype=np.float64)
    np.testing.assert_array_equal(seen[0], Generator(7).normal((2, 1, 2, 2), dtype=np.float64))
    np.testing.assert_array_equal(x, seen[0])  # zero velocity: nothing moves
    np.testing.assert_allclose(time_grid(4), [1, 0.75, 0.5, 0.25, 0])
    with pytest.raises(ValueError, match="unknown flow sampler"):
        LinearFlow().sample_loop(model, (2, 1, 2, 2), 3, "rk4", rng=Generator(0))


def test_guidance_extrapolates_the_class_mean(monkeypatch):
    """Classifier-free guidance through minidit.guidance with the exact velocities of Gaussian
    classes of one width s: class c has mean mu_c, the null class mu_u. The guided velocity
    v_u + w (v_c - v_u) is then the exact velocity of N(mu_u + w (mu_c - mu_u), s^2), so guided
    Heun sampling must land on mu_u + w (mu_c - mu_u) + s z, sample by sample."""
    rs = np.random.default_rng(1)
    cfg = tiny_dit(in_channels=2, input_size=4, num_classes=3)
    mus = rs.uniform(-1, 1, (cfg.num_classes + 1, 2, 4, 4))  # row K: the null class
    s = 0.7

    def fake_dit_apply(params, x, tm, y, cfg_):
        assert cfg_ is cfg
        return exact_velocity(x, float(tm[0]) / TIME_SCALE, mus[np.asarray(y)], s)
    monkeypatch.setattr(guidance, "dit_apply", fake_dit_apply)
    labels = np.array([0, 2, 1, 2])
    z = rs.standard_normal((4, 2, 4, 4))
    for w in (1.0, 4.0):
        x = LinearFlow().sample_loop(make_model_fn({}, cfg, labels, w), z.shape, 60, "heun", noise=z)
        target = mus[-1] + w * (mus[labels] - mus[-1]) + s * z
        err = float(abs(x - target).max())
        print(f"guidance {w}: max |x - (mu_u + w (mu_c - mu_u) + s z)| = {err:.1e}")
        assert err < 1e-3  # Heun's error at 60 steps; a wrong combination misses by about 1


def test_guided_velocity_of_a_real_dit_at_continuous_times(xp):
    """make_model_fn on a float64 DiT called with fractional times: the guided output equals
    v_u + w (v_c - v_u) from two separate forwards (to float64 rounding)."""
    cfg = tiny_dit(learn_sigma=False)
    params = randomised_params(xp, cfg)
    rs = np.random.default_rng(2)
    x = xp.asarray(rs.standard_normal((3, cfg.in_channels, cfg.input_size, cfg.input_size)))
    tm = xp.asarray(TIME_SCALE * np.array([0.0, 0.3141, 1.0]))
    y = np.array([1, 0, 4])
    v_c = dit_apply(params, x, tm, xp.asarray(y), cfg)
    v_u = dit_apply(params, x, tm, xp.full(3, cfg.num_classes), cfg)
    got = make_model_fn(params, cfg, y, 3.0)(x, tm)
    np.testing.assert_allclose(to_numpy(got), to_numpy(v_u + 3.0 * (v_c - v_u)), rtol=1e-10, atol=1e-12)
    assert not np.allclose(to_numpy(v_c), to_numpy(v_u))  # the label matters, so the check can fail


def test_flow_trains_and_samples_end_to_end(tmp_path, capsys):
    """`python -m minidit.train --objective flow` for a few steps on the built-in shapes at the
    tests' smallest model, then `python -m minidit.sample` on its checkpoint with both samplers."""
    out = tmp_path / "flow"
    rc = train.main(_args_list(tmp_path, "--objective", "flow", "--timesteps", "logit-normal",
                               "--steps", "4", "--ckpt-every", "4", out="flow"))
    assert rc == 0
    meta, groups = load_checkpoint(out / "checkpoints" / "step_0000004.npz")
    assert meta["objective"] == {"objective": "flow", "timesteps": "logit-normal", "logit_mean": 0.0,
                                 "logit_std": 1.0}
    assert meta["config"]["learn_sigma"] is False
    assert groups["model"]["final_layer.linear.b"].shape == (4 * 4 * 3,)  # p*p*C: velocity only
    rows = [json.loads(line) for line in open(out / "log.jsonl")]
    assert len(rows) == 4 and all(np.isfinite(r["loss"]) and "vb" not in r for r in rows)
    assert (out / "samples" / "step_0000004.png").exists()
    pngs = {}
    for sampler in (None, "heun"):
        png, npz = tmp_path / f"{sampler}.png", tmp_path / f"{sampler}.npz"
        argv = ["--ckpt", str(out), "--classes", "0,3", "--per-class", "2", "--steps", "3",
                "--out", str(png), "--npz", str(npz), "--no-progress"]
        assert sample.main(argv + (["--sampler", sampler] if sampler else [])) == 0
        pngs[sampler] = np.load(npz)["arr_0"]
        assert pngs[sampler].shape == (4, 8, 8, 3)
    # the command's default sampler for a flow model is Euler (Heun differs, if only slightly
    # after 4 steps: the velocity of a freshly zero-initialised final layer is small)
    params, cfg, _ = sample.load_model(out)
    labels = [0, 0, 3, 3]
    euler = sample.generate(params, cfg, labels, 3, "euler", 4.0, seed=0)
    np.testing.assert_array_equal(pngs[None], sample.to_uint8(euler))
    assert not np.array_equal(euler, sample.generate(params, cfg, labels, 3, "heun", 4.0, seed=0))
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        sample.main(["--ckpt", str(out), "--sampler", "ddpm", "--out", str(tmp_path / "x.png"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "does not fit this flow model" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "x.png").exists()


def _args_list(tmp_path, *extra, out):
    from test_train import TINY
    return TINY + ["--out", str(tmp_path / out), *extra]


@pytest.mark.parametrize("options", [
    ["--objective", "flow"],
    ["--objective", "flow", "--timesteps", "logit-normal", "--logit-mean", "-0.5", "--logit-std", "1.2"],
    ["--timesteps", "logit-normal", "--min-snr-gamma", "5", "--prediction", "v"],
], ids=["flow", "flow-logit-normal", "ddpm-logit-normal-min-snr-v"])
def test_resume_is_bit_for_bit(tmp_path, options):
    """As tests/test_train.py checks for the default objective: 3 steps, resume to 6 = 6 straight."""
    quiet = lambda *a: None  # noqa: E731
    train.run(_args(tmp_path, *options, "--steps", "6", "--ckpt-every", "6", out="straight"), log=quiet)
    train.run(_args(tmp_path, *options, "--steps", "3", "--ckpt-every", "3", out="stopped"), log=quiet)
    train.run(_args(tmp_path, *options, "--steps", "6", "--ckpt-every", "3", "--resume", out="stopped"), log=quiet)
    _, a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "step_0000006.npz")
    _, b = load_checkpoint(tmp_path / "stopped" / "checkpoints" / "step_0000006.npz")
    for group in ("model", "ema", "opt_m", "opt_v"):
        for k in a[group]:
            assert np.array_equal(a[group][k], b[group][k]), (group, k)
    la = [json.loads(line)["loss"] for line in open(tmp_path / "straight" / "log.jsonl")]
    lb = [json.loads(line)["loss"] for line in open(tmp_path / "stopped" / "log.jsonl")]
    assert la == lb


def test_resume_with_another_objective_is_refused(tmp_path):
    train.run(_args(tmp_path, "--objective", "flow", "--steps", "2", "--ckpt-every", "2"), log=lambda *a: None)
    with pytest.raises(ValueError, match="the run was trained with"):
        train.run(_args(tmp_path, "--objective", "flow", "--timesteps", "logit-normal", "--steps", "4",
                        "--resume"), log=lambda *a: None)


@pytest.mark.parametrize("argv,msg", [
    (["--objective", "score"], "invalid choice: 'score'"),
    (["--objective", "flow", "--min-snr-gamma", "5"], "--objective flow has none"),
    (["--min-snr-gamma", "0"], "--min-snr-gamma must be positive"),
    (["--logit-std", "1"], "--logit-std needs --timesteps logit-normal"),
    (["--timesteps", "logit-normal", "--logit-std", "-1"], "--logit-std must be positive"),
    (["--timesteps", "logit-normal", "--logit-mean", "nan"], "--logit-mean must be a finite number"),
    (["--timesteps", "cosine"], "invalid choice: 'cosine'"),
    (["--objective", "flow", "--prediction", "x0"], "--prediction x0 is for --objective ddpm"),
    (["--prediction", "score"], "invalid choice: 'score'"),
])
def test_bad_objective_flags_exit_2_with_one_line(tmp_path, capsys, argv, msg):
    with pytest.raises(SystemExit) as e:
        train.main(_args_list(tmp_path, *argv, out="bad"))
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and msg in err and len(err.splitlines()) == 1, err
    assert not checkpoints_of(tmp_path / "bad")


@pytest.mark.gpu
@pytest.mark.skipif(not backend.gpu_available(), reason="no CuPy (nor its stand-in)")
def test_flow_on_the_gpu_matches_the_cpu_and_resumes_bit_for_bit(tmp_path):
    """--device gpu (the CuPy stand-in in CI): flow with logit-normal times resumes to the bit on
    the device and trains the same weights as on the CPU, to float32 rounding."""
    quiet = lambda *a: None  # noqa: E731
    opts = ["--objective", "flow", "--timesteps", "logit-normal"]
    try:
        train.run(_args(tmp_path, *opts, "--device", "gpu", "--steps", "4", "--ckpt-every", "4", out="gpu"), log=quiet)
        train.run(_args(tmp_path, *opts, "--device", "gpu", "--steps", "2", "--ckpt-every", "2", out="gpu2"), log=quiet)
        train.run(_args(tmp_path, *opts, "--device", "gpu", "--steps", "4", "--ckpt-every", "2", "--resume",
                        out="gpu2"), log=quiet)
    finally:
        backend.set_device("cpu")
    train.run(_args(tmp_path, *opts, "--workers", "1", "--steps", "4", "--ckpt-every", "4", out="cpu"), log=quiet)
    a, b, c = (load_checkpoint(tmp_path / r / "checkpoints" / "step_0000004.npz")[1] for r in ("gpu", "gpu2", "cpu"))
    for group in ("model", "ema", "opt_m", "opt_v"):
        for k in a[group]:
            assert np.array_equal(a[group][k], b[group][k]), (group, k)
            np.testing.assert_allclose(a[group][k], c[group][k], rtol=1e-3, atol=1e-5, err_msg=f"{group}/{k}")


def test_flow_steps_make_few_syncs(standin):
    """A flow training step (logit-normal times) and an Euler or Heun sampling step on the device
    read nothing back but the step's logged numbers: at most 3 syncs per training step, none per
    sampling step beyond the model's own (as DDPM's, at most 1)."""
    from minidit.backend import Generator
    from minidit.diffusion import make_objective
    from minidit.model import get_config, init_params
    from minidit.training.optim import AdamW, init_ema
    from minidit.training.parallel import DataParallel
    cupy = standin
    cfg = get_config("minidit-Tiny/4", input_size=16, learn_sigma=False)
    params = init_params(cfg, seed=0, device="gpu")
    ema, opt = init_ema(params), AdamW(params, lr=1e-4)
    flow = make_objective("flow", timesteps="logit-normal")
    rng = Generator(0, device="gpu")
    x, y = rng.normal((4, 3, 16, 16), device="gpu"), rng.integers(0, 10, (4,), device="gpu")
    with DataParallel(1) as parallel:
        train.train_step(params, ema, opt, cfg, flow, x, y, rng, 0.99, parallel)
        cupy.reset_counts()
        train.train_step(params, ema, opt, cfg, flow, x, y, rng, 0.99, parallel)
    step_syncs = sum(cupy.counts["sync"].values())
    for sampler in ("euler", "heun"):
        cupy.reset_counts()
        sample.generate(params, cfg, np.arange(4), num_steps=4, sampler=sampler, guidance_scale=4.0,
                        device="gpu", workers=1)
        per_step = sum(cupy.counts["sync"].values()) / 4
        print(f"[stand-in] flow training step: {step_syncs} syncs; {sampler}: {per_step:.1f} syncs per step")
        assert per_step <= 1, dict(cupy.counts["sync"])
    assert step_syncs <= 3
