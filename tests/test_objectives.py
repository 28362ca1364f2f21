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
