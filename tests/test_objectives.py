"""Options of the Gaussian diffusion (minidit.diffusion.objectives): the default draws and computes
exactly what DiT's GaussianDiffusion does, logit-normal timesteps follow their distribution, and
the Min-SNR-gamma weighted loss has the weights and the gradient it should (float64 checks)."""
import math

import numpy as np
import pytest

from conftest import gradcheck
from minidit.backend import Generator, to_numpy
from minidit.diffusion import create_diffusion, make_objective
from minidit.diffusion.objectives import TimestepSampler, describe, min_snr_weights, snr


def _problem(xp, t, C=2, H=3, seed=0, learn_sigma=True):
    """float64 x0, noise, x_t and a model output (eps_hat near the noise, v in [-1.2, 1.2])."""
    rs = np.random.default_rng(seed)
    N = len(t)
    x0 = xp.asarray(rs.uniform(-0.99, 0.99, (N, C, H, H)))
    noise = xp.asarray(rs.standard_normal((N, C, H, H)))
    eps_hat = noise + xp.asarray(0.5 * rs.standard_normal((N, C, H, H)))
    mo = xp.concatenate([eps_hat, xp.asarray(rs.uniform(-1.2, 1.2, (N, C, H, H)))], 1) if learn_sigma else eps_hat
    return x0, noise, xp.ascontiguousarray(mo)


def test_default_objective_is_dits_diffusion_bit_for_bit(xp):
    obj, d = make_objective(), create_diffusion("")
    t_obj, t_d = obj.sample_timesteps(Generator(3), 16), Generator(3).integers(0, 1000, (16,))
    np.testing.assert_array_equal(t_obj, t_d)  # the same draws as train.py's rng.integers
    np.testing.assert_array_equal(d.sample_timesteps(Generator(3), 16), t_d)
    np.testing.assert_array_equal(obj.model_timesteps(t_obj), t_obj)  # unrespaced: the index itself
    t = np.array([0, 5, 500, 999])
    x0, noise, mo = _problem(xp, t)
    xt = obj.q_sample(x0, t, noise)
    a, b = obj.training_losses(mo, x0, xt, t, noise), d.training_losses(mo, x0, xt, t, noise)
    for k in ("loss", "mse", "vb", "grad"):
        np.testing.assert_array_equal(to_numpy(a[k]), to_numpy(b[k]))
    assert describe(obj) == {"objective": "ddpm", "timesteps": "uniform"}


def _phi(z):
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


@pytest.mark.parametrize("mean,std", [(0.0, 1.0), (-0.8, 0.6)])
def test_logit_normal_steps_follow_their_distribution(mean, std):
    """Discrete steps: step k has probability Phi((logit((k+1)/T) - m) / s) - Phi((logit(k/T) - m) / s).
    Binned into 10 ranges of steps, 200,000 draws land within 5 standard errors of that."""
    T, n = 1000, 200_000
    k = TimestepSampler("logit-normal", mean, std).discrete(Generator(0), n, T)
    assert k.dtype == np.int64 and k.min() >= 0 and k.max() <= T - 1

    def cdf(u):  # P(sigmoid(N(m, s^2)) <= u)
        return 0.0 if u <= 0 else 1.0 if u >= 1 else _phi((math.log(u / (1 - u)) - mean) / std)
    edges = np.linspace(0, T, 11).astype(int)
    counts = np.histogram(k, bins=edges)[0]
    probs = np.array([cdf(b / T) - cdf(a / T) for a, b in zip(edges, edges[1:])])
    z = (counts - n * probs) / np.sqrt(n * probs * (1 - probs))
    print(f"logit-normal({mean}, {std}): bin fractions {np.round(counts / n, 4).tolist()}, "
          f"largest z {abs(z).max():.2f}")
    assert np.all(abs(z) < 5)
    u = TimestepSampler("logit-normal", mean, std).unit(Generator(1), n)  # the continuous times of flow
    logit = np.log(u / (1 - u))
    assert abs(logit.mean() - mean) < 5 * std / math.sqrt(n) and abs(logit.std() / std - 1) < 0.01


def test_bad_timestep_options_raise():
    with pytest.raises(ValueError, match="unknown timestep sampling"):
        TimestepSampler("cosine")
    with pytest.raises(ValueError, match="positive std"):
        TimestepSampler("logit-normal", 0.0, 0.0)
    with pytest.raises(ValueError, match="not to flow"):
        make_objective("flow", min_snr_gamma=5.0)
    with pytest.raises(ValueError, match="unknown objective"):
        make_objective("score")


def test_min_snr_weights():
    """min(SNR, gamma) / SNR on DiT's linear schedule: 1 where SNR <= gamma (t >= 130 for gamma 5),
    gamma / SNR below, about 5e-4 at t = 0 (SNR about 1e4)."""
    abar = create_diffusion("").alphas_cumprod
    w, s = min_snr_weights(abar, 5.0), snr(abar)
    first_one = int(np.argmax(s <= 5.0))
    print(f"Min-SNR-5: weight {w[0]:.2e} at t = 0, {w[50]:.3f} at t = 50, 1 from t = {first_one}")
    assert first_one == 130
    np.testing.assert_array_equal(w[first_one:], 1.0)
    np.testing.assert_allclose(w[:first_one], 5.0 / s[:first_one], rtol=1e-14)
    assert np.all(np.diff(w) >= 0) and w[0] < 1e-3
    with pytest.raises(ValueError, match="gamma must be positive"):
        min_snr_weights(abar, 0.0)


T_WEIGHTED = [0, 40, 110, 500, 999]  # weights < 1 (SNR > 5) and = 1


def test_min_snr_loss_gradient(xp):
    """loss_n = w_t mse_n (learn_sigma False): the hand-written gradient on eps_hat against central
    differences in float64 with a random upstream vector (tolerance 1e-7)."""
    obj = make_objective(learn_sigma=False, min_snr_gamma=5.0)
    t = np.array(T_WEIGHTED)
    x0, noise, eps_hat = _problem(xp, t, learn_sigma=False)
    xt = obj.q_sample(x0, t, noise)
    out = obj.training_losses(eps_hat, x0, xt, t, noise)
    w = min_snr_weights(obj.diffusion.alphas_cumprod, 5.0)[t]
    np.testing.assert_allclose(to_numpy(out["loss"]), w * to_numpy(out["mse"]), rtol=1e-14)
    assert np.all(w[:3] < 1) and np.all(w[3:] == 1)

    def forward(eps_hat):
        return obj.training_losses(eps_hat, x0, xt, t, noise)["loss"], None

    def backward(dout, cache):
        return (obj.training_losses(eps_hat, x0, xt, t, noise, dloss=dout)["grad"],)
    gradcheck("Min-SNR-5 weighted mse (per sample)", forward, backward, dict(eps_hat=eps_hat), tol=1e-7)


def test_min_snr_with_learned_sigma_weights_only_the_noise_channels(xp):
    """With the hybrid loss: loss = w mse + vb; the noise channels' gradient is w times DiT's, the
    variance channels' gradient is DiT's unchanged (the vb term is not weighted)."""
    C = 2
    t = np.array(T_WEIGHTED)
    plain, weighted = make_objective(), make_objective(min_snr_gamma=5.0)
    x0, noise, mo = _problem(xp, t, C, seed=4)
    xt = plain.q_sample(x0, t, noise)
    dloss = xp.asarray(np.random.default_rng(5).standard_normal(len(t)))
    a = plain.training_losses(mo, x0, xt, t, noise, dloss=dloss)
    b = weighted.training_losses(mo, x0, xt, t, noise, dloss=dloss)
    w = min_snr_weights(plain.diffusion.alphas_cumprod, 5.0)[t]
    np.testing.assert_allclose(to_numpy(b["loss"]), w * to_numpy(a["mse"]) + to_numpy(a["vb"]), rtol=1e-13)
    np.testing.assert_array_equal(to_numpy(b["mse"]), to_numpy(a["mse"]))
    np.testing.assert_allclose(to_numpy(b["grad"][:, :C]), w[:, None, None, None] * to_numpy(a["grad"][:, :C]),
                               rtol=1e-13)
    np.testing.assert_array_equal(to_numpy(b["grad"][:, C:]), to_numpy(a["grad"][:, C:]))
    assert describe(weighted) == {"objective": "ddpm", "timesteps": "uniform", "min_snr_gamma": 5.0}


def _as_prediction(d, kind, eps_hat, xt, t):
    """The x0 or v prediction that implies the same x_0 as eps_hat (N, C, H, W) at x_t."""
    x0_hat = d.pred_xstart_from(eps_hat, xt, d.indices(t, xt.shape[0], like=xt))
    if kind == "eps":
        return eps_hat
    if kind == "x0":
        return x0_hat
    ti = d.indices(t, xt.shape[0], like=xt)
    return d.gather("sqrt_alphas_cumprod", ti, xt) * eps_hat - d.gather("sqrt_one_minus_alphas_cumprod", ti, xt) * x0_hat


@pytest.mark.parametrize("kind", ["x0", "v"])
def test_other_predictions_define_the_same_reverse_step(xp, kind):
    """An x0 or v prediction converted from an eps prediction gives the same x_0, mean and variance
    (so DDPM and DDIM sample the same chain), and the training target is the converted noise."""
    t = np.array([0, 7, 300, 999])
    d, dk = create_diffusion(""), create_diffusion("", prediction=kind)
    x0, noise, mo = _problem(xp, t, seed=6)
    xt = d.q_sample(x0, t, noise)
    C = x0.shape[1]
    mo_k = xp.concatenate([_as_prediction(d, kind, mo[:, :C], xt, t), mo[:, C:]], 1)
    a, b = d.p_mean_variance(mo, xt, t), dk.p_mean_variance(mo_k, xt, t)
    for k in ("mean", "log_variance", "pred_xstart"):
        np.testing.assert_allclose(to_numpy(b[k]), to_numpy(a[k]), rtol=1e-9, atol=1e-9, err_msg=k)
    target = dk.prediction_target(x0, noise, t)
    np.testing.assert_allclose(to_numpy(target), to_numpy(_as_prediction(d, kind, noise, xt, t)), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(to_numpy(dk.pred_xstart_from(target, xt, t)), to_numpy(x0), rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="unknown prediction"):
        create_diffusion("", prediction="score")


@pytest.mark.parametrize("kind", ["x0", "v"])
def test_hybrid_loss_gradient_for_other_predictions(xp, kind):
    """The hybrid loss (mse on the prediction, vb on the variance channels with the prediction
    frozen), on the data of tests/test_diffusion.py with its eps prediction converted (the same
    implied x_0, off by 0.5 sqrt((1 - abar) / abar) z: 0.005 at t = 0, about 80 at t = 999).
    - The mse alone (learn_sigma False) against central differences in float64 with a random
      upstream vector, every t, tolerance 1e-7.
    - The whole loss through the check tests/test_diffusion.py makes for eps (rows < 1e-6, random
      upstream vector) at t = 0, 1, 700. At t = 999 the variance channels' gradient is about 1e-9 of the x_0
      mse (about 7000) and cannot be differenced through that sum; there the vb and its gradient
      must equal those of the eps diffusion, which tests/test_diffusion.py checks at t = 999.
    One timestep per batch, so the large losses of noisy steps do not drown the clean ones'.
    """
    from test_diffusion import _check_loss_gradient, _loss_problem
    C = 2
    dk, plain = create_diffusion("", prediction=kind), create_diffusion("", learn_sigma=False, prediction=kind)
    for t in ([0, 0], [1, 1], [250, 250], [700, 700], [999, 999]):
        d, mo, x0, xt, t, noise = _loss_problem(xp, t, C, seed=2)
        pred = xp.ascontiguousarray(_as_prediction(d, kind, mo[:, :C], xt, t))
        gradcheck(f"{kind}-prediction mse, t = {t[0]}", lambda pred: (plain.training_losses(pred, x0, xt, t, noise)["loss"], None),
                  lambda dout, c: (plain.training_losses(pred, x0, xt, t, noise, dloss=dout)["grad"],),
                  dict(pred=pred), tol=1e-7)
        mo_k = xp.ascontiguousarray(xp.concatenate([pred, mo[:, C:]], 1))
        if t[0] in (0, 1, 700):
            _check_loss_gradient(xp, dk, mo_k, x0, xt, t, noise, C)
        elif t[0] == 999:
            a, b = d.training_losses(mo, x0, xt, t, noise), dk.training_losses(mo_k, x0, xt, t, noise)
            np.testing.assert_allclose(to_numpy(b["vb"]), to_numpy(a["vb"]), rtol=1e-9)
            np.testing.assert_allclose(to_numpy(b["grad"][:, C:]), to_numpy(a["grad"][:, C:]), rtol=1e-6)


def test_min_snr_weights_of_other_predictions():
    abar = create_diffusion("").alphas_cumprod
    s = snr(abar)
    np.testing.assert_allclose(min_snr_weights(abar, 5.0, "x0"), np.minimum(s, 5.0), rtol=1e-15)
    np.testing.assert_allclose(min_snr_weights(abar, 5.0, "v"), np.minimum(s, 5.0) / (s + 1), rtol=1e-15)
    # the same weight on the x_0 error, whatever is predicted: w_pred * (pred error / x_0 error)^2
    for kind, factor in (("eps", s), ("x0", 1.0), ("v", s + 1)):
        np.testing.assert_allclose(min_snr_weights(abar, 5.0, kind) * factor, np.minimum(s, 5.0), rtol=1e-12)


def test_min_snr_v_prediction_loss_gradient(xp):
    obj = make_objective(learn_sigma=False, min_snr_gamma=5.0, prediction="v")
    t = np.array(T_WEIGHTED)
    x0, noise, v_hat = _problem(xp, t, learn_sigma=False, seed=8)
    xt = obj.q_sample(x0, t, noise)

    def forward(v_hat):
        return obj.training_losses(v_hat, x0, xt, t, noise)["loss"], None

    def backward(dout, cache):
        return (obj.training_losses(v_hat, x0, xt, t, noise, dloss=dout)["grad"],)
    gradcheck("Min-SNR-5 weighted mse, v prediction (per sample)", forward, backward, dict(v_hat=v_hat), tol=1e-7)
    assert describe(obj) == {"objective": "ddpm", "timesteps": "uniform", "min_snr_gamma": 5.0, "prediction": "v"}
    with pytest.raises(ValueError, match="predicts its velocity"):
        make_objective("flow", prediction="x0")


def test_x0_prediction_trains_and_samples_end_to_end(tmp_path):
    """`python -m minidit.train --prediction x0` records what its model predicts, and
    `python -m minidit.sample` samples it as an x0 model (not as a noise model)."""
    from minidit.commands import sample, train
    from minidit.training.checkpoint import load_checkpoint
    from test_train import TINY
    out = tmp_path / "x0"
    assert train.main(TINY + ["--out", str(out), "--prediction", "x0", "--steps", "2", "--ckpt-every", "2"]) == 0
    meta, _ = load_checkpoint(out / "checkpoints" / "step_0000002.npz")
    assert meta["objective"] == {"objective": "ddpm", "timesteps": "uniform", "prediction": "x0"}
    npz = tmp_path / "s.npz"
    assert sample.main(["--ckpt", str(out), "--classes", "1,2", "--per-class", "1", "--steps", "3",
                        "--out", str(tmp_path / "s.png"), "--npz", str(npz), "--no-progress"]) == 0
    params, cfg, _ = sample.load_model(out)
    as_x0 = sample.generate(params, cfg, [1, 2], 3, "ddpm", 4.0, seed=0, prediction="x0")
    as_eps = sample.generate(params, cfg, [1, 2], 3, "ddpm", 4.0, seed=0)
    np.testing.assert_array_equal(np.load(npz)["arr_0"], sample.to_uint8(as_x0))
    assert not np.array_equal(as_x0, as_eps)
