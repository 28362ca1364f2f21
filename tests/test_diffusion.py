"""Tests of minidit.diffusion and minidit.diffusion.losses (docs/paper.md §3 and §5)."""
import math

import numpy as np
import pytest

from minidit.backend import Generator, get_array_module, to_numpy
from minidit.diffusion import create_diffusion, get_named_beta_schedule, space_timesteps
from minidit.diffusion.losses import (approx_standard_normal_cdf, approx_standard_normal_cdf_grad,
                                      discretized_gaussian_log_likelihood,
                                      discretized_gaussian_log_likelihood_grad_log_scales,
                                      normal_kl, normal_kl_grad_logvar2)
from minidit.gradcheck import GradCheckResult, check_gradients, rel_error


# Schedule (docs/paper.md §3.2)

def test_linear_schedule_closed_forms():
    d = create_diffusion("")
    lin = np.linspace(1e-4, 0.02, 1000)
    assert d.num_timesteps == 1000 and d.betas.dtype == np.float64
    assert d.betas[0] == pytest.approx(1e-4, rel=1e-12) and d.betas[-1] == pytest.approx(0.02, rel=1e-12)
    # "" is respaced too: betas are recomputed from alpha-bar and differ from linspace by rounding only
    assert np.abs(d.betas - lin).max() < 1e-15
    np.testing.assert_array_equal(d.timestep_map, np.arange(1000))
    abar = np.cumprod(1 - lin)
    np.testing.assert_allclose(d.alphas_cumprod, abar, rtol=1e-13)
    np.testing.assert_allclose(d.alphas_cumprod_prev, np.append(1.0, abar[:-1]), rtol=1e-13)
    np.testing.assert_allclose(d.alphas_cumprod_next, np.append(abar[1:], 0.0), rtol=1e-13)
    np.testing.assert_allclose(d.sqrt_alphas_cumprod, np.sqrt(abar), rtol=1e-13)
    np.testing.assert_allclose(d.sqrt_one_minus_alphas_cumprod, np.sqrt(1 - abar), rtol=1e-12)
    np.testing.assert_allclose(d.log_one_minus_alphas_cumprod, np.log(1 - abar), rtol=1e-12)
    np.testing.assert_allclose(d.sqrt_recip_alphas_cumprod, 1 / np.sqrt(abar), rtol=1e-13)
    np.testing.assert_allclose(d.sqrt_recipm1_alphas_cumprod, np.sqrt(1 / abar - 1), rtol=1e-12)
    prev = np.append(1.0, abar[:-1])
    post = lin * (1 - prev) / (1 - abar)
    np.testing.assert_allclose(d.posterior_variance, post, rtol=1e-11, atol=1e-300)
    assert d.posterior_variance[0] == 0.0
    # element 0 of the clipped log variance is replaced by element 1
    assert d.posterior_log_variance_clipped[0] == d.posterior_log_variance_clipped[1]
    np.testing.assert_allclose(d.posterior_log_variance_clipped[1:], np.log(post[1:]), rtol=1e-11)
    np.testing.assert_allclose(d.posterior_mean_coef1, lin * np.sqrt(prev) / (1 - abar), rtol=1e-11)
    np.testing.assert_allclose(d.posterior_mean_coef2, (1 - prev) * np.sqrt(1 - lin) / (1 - abar), rtol=1e-11)
    assert d.posterior_mean_coef1[0] == pytest.approx(1.0, abs=1e-12)
    assert d.posterior_mean_coef2[0] == 0.0


def test_linear_schedule_scales_with_T_and_cosine_schedule():
    b = get_named_beta_schedule("linear", 500)
    assert b[0] == pytest.approx(2e-4) and b[-1] == pytest.approx(0.04)
    c = get_named_beta_schedule("squaredcos_cap_v2", 1000)
    f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert c[0] == pytest.approx(1 - f(1e-3) / f(0), rel=1e-12)
    assert c[-1] == 0.999 and np.all(np.diff(c) > 0)


# Respacing (docs/paper.md §3.3)

def _expected_sections(T, counts):
    """The documented rule, written independently: equal sections, remainder first, round(k * stride)."""
    out, start = [], 0
    for i, n in enumerate(counts):
        size = T // len(counts) + (1 if i < T % len(counts) else 0)
        stride = 1 if n == 1 else (size - 1) / (n - 1)
        out += [start + round(k * stride) for k in range(n)]
        start += size
    return out


@pytest.mark.parametrize("spec,counts", [("25", [25]), ("10", [10]), ("250", [250]),
                                         ("10,15,20", [10, 15, 20]), ("1,1", [1, 1])])
def test_respacing_sections(spec, counts):
    d = create_diffusion(spec)
    expected = _expected_sections(1000, counts)
    np.testing.assert_array_equal(d.timestep_map, expected)
    assert d.num_timesteps == len(expected) == sum(counts)
    if spec == "25":
        assert list(d.timestep_map[:3]) == [0, 42, 83] and list(d.timestep_map[-2:]) == [957, 999]
    if spec == "10":
        assert list(d.timestep_map) == [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
    if spec == "10,15,20":
        assert list(d.timestep_map[9:11]) == [333, 334] and d.timestep_map[25] == 667


def test_respacing_ddim():
    np.testing.assert_array_equal(create_diffusion("ddim10").timestep_map, np.arange(0, 1000, 100))
    np.testing.assert_array_equal(create_diffusion("ddim250").timestep_map, np.arange(0, 1000, 4))
    assert 999 not in create_diffusion("ddim10").timestep_map  # ddim10 != 10
    assert space_timesteps(1000, "ddim7") == list(range(0, 1000, 143))  # smallest stride with 7 steps


def test_one_step_chain():
    """Deviation: the official code fails on a 1-step chain; we clip its log-variance to log beta_0."""
    d = create_diffusion("1")
    assert list(d.timestep_map) == [0] and d.posterior_log_variance_clipped[0] == np.log(d.betas[0])
    x0 = np.full((1, 1, 2, 2), 0.3)
    model_fn, _ = _single_point_model(x0, create_diffusion(""))
    out = d.ddim_sample_loop(model_fn, x0.shape, rng=Generator(0), dtype=np.float64)
    np.testing.assert_allclose(out, x0, atol=1e-12)


@pytest.mark.parametrize("spec", ["50", "ddim25", "10,15,20"])
def test_respaced_betas_recomputed_from_alphas_cumprod(spec):
    base, d = create_diffusion(""), create_diffusion(spec)
    s = d.timestep_map
    np.testing.assert_allclose(d.alphas_cumprod, base.alphas_cumprod[s], rtol=1e-13)
    kept = base.alphas_cumprod[s]
    np.testing.assert_array_equal(d.betas, 1 - kept / np.append(1.0, kept[:-1]))


@pytest.mark.parametrize("kwargs,match", [
    (dict(timestep_respacing="1001"), "1001"),
    (dict(timestep_respacing="400,400,400"), "400"),
    (dict(timestep_respacing="ddim600"), "ddim600"),
    (dict(timestep_respacing="ddim0"), "0"),
    (dict(timestep_respacing="0"), "0"),
    (dict(timestep_respacing="-5"), "-5"),
    (dict(timestep_respacing="10,abc"), "abc"),
    (dict(timestep_respacing="ddimx"), "x"),
    (dict(noise_schedule="cosine"), "cosine"),
    (dict(diffusion_steps=0), "0"),
])
def test_bad_inputs_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_diffusion(**kwargs)


def test_bad_timestep_index_raises():
    d = create_diffusion("10")
    x = np.zeros((2, 1, 2, 2))
    with pytest.raises(ValueError, match="10"):
        d.q_sample(x, np.array([0, 10]), x)


# Forward process and p_mean_variance (docs/paper.md §3.1, §3.5)

def test_q_sample_statistics(xp):
    d = create_diffusion("")
    rng = Generator(0)
    n, t = 20000, 300
    x0 = xp.asarray(np.linspace(-1, 1, 4).reshape(1, 1, 2, 2) * np.ones((n, 1, 1, 1)))
    noise = rng.normal(x0.shape, np.float64, "gpu" if xp is not np else "cpu")
    xt = to_numpy(d.q_sample(x0, np.full(n, t), noise))
    abar = d.alphas_cumprod[t]
    # loose: 4 standard errors of a mean and of a variance estimate from 20000 draws
    np.testing.assert_allclose(xt.mean(0), math.sqrt(abar) * to_numpy(x0[0]), atol=4 * math.sqrt((1 - abar) / n))
    np.testing.assert_allclose(xt.var(0), 1 - abar, rtol=4 * math.sqrt(2 / n))


def test_coefficients_follow_dtype_and_device(xp):
    d = create_diffusion("10")
    x = xp.ones((3, 2, 2, 2), dtype=xp.float32)
    out = d.p_mean_variance(xp.zeros((3, 4, 2, 2), dtype=xp.float32), x, xp.asarray([0, 5, 9]))
    for v in out.values():
        assert get_array_module(v) is xp and v.dtype == xp.float32 and v.shape == x.shape


def test_p_mean_variance_learned_range_and_t0(xp):
    d = create_diffusion("")
    rs = np.random.default_rng(1)
    x = xp.asarray(rs.standard_normal((3, 2, 2, 2)))
    v = rs.uniform(-1.5, 1.5, (3, 2, 2, 2))  # outside [-1, 1] extrapolates
    t = np.array([0, 17, 999])
    out = d.p_mean_variance(xp.concatenate([xp.zeros_like(x), xp.asarray(v)], 1), x, t)
    lo = d.posterior_log_variance_clipped[t][:, None, None, None]
    hi = np.log(d.betas[t])[:, None, None, None]
    frac = (v + 1) / 2
    np.testing.assert_allclose(to_numpy(out["log_variance"]), frac * hi + (1 - frac) * lo, rtol=1e-13)
    # with eps_hat = 0 the x0 prediction is x_t / sqrt(abar), and at t = 0 the mean is x0_hat
    np.testing.assert_allclose(to_numpy(out["pred_xstart"]),
                               to_numpy(x) / np.sqrt(d.alphas_cumprod[t])[:, None, None, None], rtol=1e-13)
    np.testing.assert_allclose(to_numpy(out["mean"][0]), to_numpy(out["pred_xstart"][0]), rtol=1e-13)
    # learn_sigma=False: FIXED_SMALL, the posterior variance with its clipped log
    fixed = create_diffusion("", learn_sigma=False).p_mean_variance(xp.zeros_like(x), x, t)
    np.testing.assert_allclose(to_numpy(fixed["variance"])[:, 0, 0, 0], d.posterior_variance[t], rtol=1e-13)
    np.testing.assert_allclose(to_numpy(fixed["log_variance"])[:, 0, 0, 0], lo[:, 0, 0, 0], rtol=1e-13)


# The hybrid loss and its hand-written gradient (docs/paper.md §3.4)

def test_elementwise_derivatives():
    """Each small function's derivative against central differences; float64, rel error < 1e-7."""
    rs = np.random.default_rng(2)
    h = 1e-6
    u = rs.uniform(-4, 4, 50)
    num = (approx_standard_normal_cdf(u + h) - approx_standard_normal_cdf(u - h)) / (2 * h)
    assert rel_error(approx_standard_normal_cdf_grad(u), num) < 1e-7
    m1, l1, m2, l2 = rs.standard_normal((4, 50))
    num = (normal_kl(m1, l1, m2, l2 + h) - normal_kl(m1, l1, m2, l2 - h)) / (2 * h)
    assert rel_error(normal_kl_grad_logvar2(m1, l1, m2, l2), num) < 1e-7
    # bins at both open edges and inside, scales from narrow (1e-3) to wide (1)
    x = np.concatenate([rs.uniform(-1, -0.9995, 20), rs.uniform(-0.99, 0.99, 20), rs.uniform(0.9995, 1, 20)])
    means = x + rs.normal(0, 0.01, 60)
    ls = rs.uniform(math.log(1e-3), 0, 60)
    f = discretized_gaussian_log_likelihood
    num = (f(x, means, ls + h) - f(x, means, ls - h)) / (2 * h)
    err = rel_error(discretized_gaussian_log_likelihood_grad_log_scales(x, means, ls), num)
    print(f"dll/dlog_scales rel error {err:.2e}")
    assert err < 1e-7


def _loss_problem(xp, t, C=2, H=3, seed=0, spec=""):
    """A float64 batch: model_output (N, 2C, H, H) = [eps_hat, v] and its targets.

    x_start mixes values beyond the +-0.999 edges with interior ones; eps_hat is noise plus a
    small error so no likelihood sits near its 1e-12 clamp, except one entry of sample 0 made
    12 std off so that clamp is active deep inside (its gradient must be 0, and is numerically).
    """
    d = create_diffusion(spec)
    rs = np.random.default_rng(seed)
    N = len(t)
    x0 = rs.uniform(-0.99, 0.99, (N, C, H, H))
    x0[:, 0, 0, :] = [-0.9996, -0.9993, 0.9997][:H]
    x0[:, 1, 0, :] = [0.9992, 0.9999, -0.9998][:H]
    noise = rs.standard_normal(x0.shape)
    eps_hat = noise + 0.5 * rs.standard_normal(x0.shape)
    if t[0] == 0:
        eps_hat[0, 1, 2, 2] = noise[0, 1, 2, 2] + 10.0
    v = rs.uniform(-1.2, 1.2, x0.shape)
    x0, noise = xp.asarray(x0), xp.asarray(noise)
    t = np.asarray(t)
    xt = d.q_sample(x0, t, noise)
    model_output = xp.ascontiguousarray(xp.asarray(np.concatenate([eps_hat, v], 1)))
    return d, model_output, x0, xt, t, noise


def _check_loss_gradient(xp, d, mo, x0, xt, t, noise, C, mean_loss=False):
    """check_gradients on the loss with the stop-gradient written out, one row per sample and group.

    The checked function is loss_n = mse_n(eps_hat) + vb_n(frozen eps_hat, v): the function whose
    gradient training_losses returns. Per-sample rows keep a large gradient in one sample from
    hiding errors in another. d loss / d v scales with log beta_t - log beta~_t, which is ~1e-6 at
    t = T-1, so each v row uses a step h that moves the log-variance by 1e-5 (log-variance is
    affine in v, so this is the same central difference taken in log-variance units).
    mean_loss=False: the (N,) loss vector against a random upstream vector;
    True: the scalar batch mean (a 1-element array) against dout = 1.
    """
    N = mo.shape[0]
    frozen = mo[:, :C].copy()
    arrays = {}
    for n in range(N):
        arrays[f"eps_hat[{n}]"] = mo[n:n + 1, :C].copy()
    for n in range(N):
        arrays[f"v[{n}]"] = mo[n:n + 1, C:].copy()

    def forward(**a):
        eps_hat = xp.concatenate([a[f"eps_hat[{n}]"] for n in range(N)])
        v = xp.concatenate([a[f"v[{n}]"] for n in range(N)])
        mse = d.training_losses(xp.concatenate([eps_hat, v], 1), x0, xt, t, noise)["mse"]
        vb = d.training_losses(xp.concatenate([frozen, v], 1), x0, xt, t, noise)["vb"]
        loss = mse + vb
        return (xp.reshape(loss.mean(), (1,)) if mean_loss else loss), None

    def backward(dout, cache):
        if mean_loss:
            grad = d.training_losses(mo, x0, xt, t, noise)["grad"] * dout[0]
        else:
            grad = d.training_losses(mo, x0, xt, t, noise, dloss=dout)["grad"]
        g = {f"eps_hat[{n}]": grad[n:n + 1, :C] for n in range(N)}
        g.update({f"v[{n}]": grad[n:n + 1, C:] for n in range(N)})
        return g

    dout = xp.ones(1) if mean_loss else xp.asarray(np.random.default_rng(9).standard_normal(N))
    rows = check_gradients(forward, backward, arrays, wrt=[f"eps_hat[{n}]" for n in range(N)],
                           dout=dout, tol=1e-6).rows
    span = np.log(d.betas[t]) - d.posterior_log_variance_clipped[t]
    for n in range(N):
        rows += check_gradients(forward, backward, arrays, wrt=[f"v[{n}]"], dout=dout,
                                h=1e-5 / (0.5 * span[n]), tol=1e-6).rows
    result = GradCheckResult(rows, tol=1e-6)
    print(f"t = {t.tolist()}, {'batch-mean' if mean_loss else 'per-sample'} loss\n{result}")
    return result.assert_ok()


@pytest.mark.parametrize("t", [[0, 0, 0], [1, 500, 999], [0, 1, 250, 999]], ids=["t0", "interior+T-1", "mixed"])
def test_training_loss_gradient(xp, t):
    """The hand-written gradient of the per-sample loss (random upstream vector) and of the
    batch-mean loss (dout = 1) against central differences in float64: each row's rel error
    < 1e-6 (measured about 1e-8 or less)."""
    C = 2
    d, mo, x0, xt, t, noise = _loss_problem(xp, t, C)
    _check_loss_gradient(xp, d, mo, x0, xt, t, noise, C)
    _check_loss_gradient(xp, d, mo, x0, xt, t, noise, C, mean_loss=True)
    out = d.training_losses(mo, x0, xt, t, noise)
    np.testing.assert_allclose(to_numpy(out["loss"]), to_numpy(out["mse"] + out["vb"]), rtol=1e-15)
    if t[0] == 0:  # the clamped entry of sample 0 receives no gradient
        assert float(out["grad"][0, C + 1, 2, 2]) == 0.0


def test_training_loss_gradient_respaced(xp):
    """Same check on a respaced chain ("10"), per-sample upstream vector: each row < 1e-6."""
    C = 2
    d, mo, x0, xt, t, noise = _loss_problem(xp, [0, 4, 9], C, seed=3, spec="10")
    _check_loss_gradient(xp, d, mo, x0, xt, t, noise, C)


def test_no_cross_gradient_between_mse_and_vb(xp):
    """eps channels get exactly the pure-MSE gradient; v channels get exactly none from mse."""
    C = 2
    d, mo, x0, xt, t, noise = _loss_problem(xp, [0, 3, 700], C)
    full = d.training_losses(mo, x0, xt, t, noise)
    plain = create_diffusion("", learn_sigma=False).training_losses(mo[:, :C], x0, xt, t, noise)
    np.testing.assert_array_equal(to_numpy(full["grad"][:, :C]), to_numpy(plain["grad"]))
    np.testing.assert_array_equal(to_numpy(full["mse"]), to_numpy(plain["loss"]))
    # changing the mse target (noise, with x_t held fixed) leaves the v gradient untouched
    other = d.training_losses(mo, x0, xt, t, noise + 1.0)
    np.testing.assert_array_equal(to_numpy(other["grad"][:, C:]), to_numpy(full["grad"][:, C:]))
    assert "vb" not in plain


def test_vb_depends_on_eps_hat_in_the_forward_pass():
    """The stop-gradient is a real choice: vb does change with eps_hat, yet sends it no gradient."""
    C = 2
    d, mo, x0, xt, t, noise = _loss_problem(np, [3, 500], C)
    moved = mo.copy()
    moved[:, :C] += 0.1
    vb_moved = d.training_losses(moved, x0, xt, t, noise)["vb"]
    assert np.all(vb_moved != d.training_losses(mo, x0, xt, t, noise)["vb"])


def test_plain_mse_without_learn_sigma(xp):
    d = create_diffusion("", learn_sigma=False)
    rs = np.random.default_rng(4)
    eps_hat, x0, noise = (xp.asarray(rs.standard_normal((3, 2, 2, 2))) for _ in range(3))
    t = np.array([0, 5, 999])
    out = d.training_losses(eps_hat, x0, d.q_sample(x0, t, noise), t, noise)
    mse = ((noise - eps_hat) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(to_numpy(out["loss"]), to_numpy(mse), rtol=1e-14)
    # d mean_n(mse_n) / d eps_hat = -2 (noise - eps_hat) / (C H W N), with C H W = 8 and N = 3
    np.testing.assert_allclose(to_numpy(out["grad"]), to_numpy(-2 * (noise - eps_hat) / (8 * 3)), rtol=1e-14)


def test_loss_at_init_is_about_one(xp):
    """A zero model output (DiT at init) gives mse ~ 1 and a small positive vb (docs/paper.md §1.8)."""
    d = create_diffusion("")
    rng = Generator(0)
    dev = "gpu" if xp is not np else "cpu"
    x0 = rng.uniform((64, 4, 4, 4), -1, 1, device=dev)
    noise = rng.normal(x0.shape, device=dev)
    t = rng.integers(0, 1000, (64,))
    out = d.training_losses(xp.zeros((64, 8, 4, 4), xp.float32), x0, d.q_sample(x0, t, noise), t, noise)
    assert out["grad"].dtype == xp.float32
    assert abs(float(out["mse"].mean()) - 1) < 0.1 and 0 < float(out["vb"].mean()) < 1


# Samplers (docs/paper.md §3.6)

def _single_point_model(x0, base):
    """The exact eps-model of data that is the single point x0: eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar),
    with abar read at the ORIGINAL timestep the sampler passes."""
    seen = []

    def model_fn(x, t_orig):
        xp = get_array_module(x)
        assert get_array_module(t_orig) is xp and t_orig.dtype == np.int64
        seen.append(int(to_numpy(t_orig)[0]))
        abar = xp.asarray(base.alphas_cumprod[to_numpy(t_orig)]).reshape(-1, 1, 1, 1)
        eps = (x - xp.sqrt(abar) * x0) / xp.sqrt(1 - abar)
        return xp.concatenate([eps, xp.zeros_like(eps)], 1)  # v = 0: midway log-variance
    return model_fn, seen


@pytest.mark.parametrize("spec,ddim", [("50", False), ("ddim25", True)])
def test_sampler_lands_on_single_data_point(xp, spec, ddim):
    """Both samplers return x0 to 1e-4 (float64) and predict x0 at every step (so t is mapped right)."""
    base, d = create_diffusion(""), create_diffusion(spec)
    x0 = xp.asarray(np.linspace(-0.9, 0.9, 2 * 2 * 3 * 3).reshape(2, 2, 3, 3))
    model_fn, seen = _single_point_model(x0, base)
    preds = []
    loop = d.ddim_sample_loop if ddim else d.p_sample_loop
    dev = "gpu" if xp is not np else "cpu"
    out = loop(model_fn, x0.shape, rng=Generator(5), dtype=np.float64, device=dev,
               callback=lambda i, o: preds.append(float(abs(o["pred_xstart"] - x0).max())))
    assert get_array_module(out) is xp
    assert seen == list(d.timestep_map[::-1])
    assert max(preds) < 1e-4
    assert float(abs(out - x0).max()) < 1e-4


def test_sampler_reproducible_and_same_on_every_backend(xp):
    d = create_diffusion("ddim10")
    dev = "gpu" if xp is not np else "cpu"

    def model_fn(x, t_orig):  # an arbitrary smooth model
        return get_array_module(x).concatenate([0.5 * x, 0.3 * x], 1)

    runs = {}
    for name, (loop, kw) in {"ddpm": (d.p_sample_loop, {}), "ddim": (d.ddim_sample_loop, {"eta": 1.0})}.items():
        a = loop(model_fn, (2, 2, 3, 3), rng=Generator(7), dtype=np.float64, device=dev, **kw)
        b = loop(model_fn, (2, 2, 3, 3), rng=Generator(7), dtype=np.float64, device=dev, **kw)
        c = loop(model_fn, (2, 2, 3, 3), rng=Generator(7), dtype=np.float64, device="cpu", **kw)
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
        np.testing.assert_allclose(to_numpy(a), c, rtol=1e-10, atol=1e-12)  # GPU vs CPU
        runs[name] = to_numpy(a)
    assert not np.allclose(runs["ddpm"], runs["ddim"])


def test_ddim_draws_noise_every_step_even_for_eta_zero():
    """Matching the official draw order keeps seeds comparable: eta=0 consumes one z per step."""
    d = create_diffusion("ddim5")
    rng = Generator(1)
    d.ddim_sample_loop(lambda x, t: np.concatenate([x, x], 1), (1, 1, 2, 2), rng=rng, dtype=np.float64)
    ref = Generator(1)
    for _ in range(1 + 5):
        ref.normal((1, 1, 2, 2), np.float64)
    assert rng.get_state() == ref.get_state()


def test_sampler_needs_noise_or_rng():
    d = create_diffusion("5")
    with pytest.raises(ValueError, match="rng"):
        d.p_sample_loop(lambda x, t: np.concatenate([x, x], 1), (1, 1, 2, 2))
    out = d.p_sample_loop(lambda x, t: np.concatenate([x, x], 1), (1, 1, 2, 2),
                          noise=np.zeros((1, 1, 2, 2)), rng=Generator(0), progress=True)
    assert out.shape == (1, 1, 2, 2)
