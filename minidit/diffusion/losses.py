"""DiT's hybrid training loss, L_simple + L_vlb (docs/paper.md §3.4; Improved DDPM), with its gradient
on the model output written by hand. The variational bound trains only the variance channels v:
it sees a frozen eps_hat (stop-gradient), so the two terms never send gradient to each other's channels.
"""
import math

import numpy as np

from ..backend import get_array_module
from ..layers import mse_backward, mse_forward

LN2 = math.log(2.0)
_K = math.sqrt(2.0 / math.pi)  # of the tanh approximation of the normal CDF
_CLAMP = 1e-12  # floor of every log argument in the decoder likelihood


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) per element (natural log units)."""
    xp = get_array_module(mean1, mean2)
    return 0.5 * (-1.0 + logvar2 - logvar1 + xp.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * xp.exp(-logvar2))


# exercise: 3.1 Preliminaries: diffusion formulation
def normal_kl_grad_logvar2(mean1, logvar1, mean2, logvar2):
    """d normal_kl / d logvar2 per element (the only input the loss differentiates)."""
    xp = get_array_module(mean1, mean2)
    # kl = 0.5 (-1 + logvar2 - logvar1 + exp(logvar1 - logvar2) + (mean1 - mean2)^2 exp(-logvar2))
    return 0.5 * (1.0 - xp.exp(logvar1 - logvar2) - (mean1 - mean2) ** 2 * xp.exp(-logvar2))


def approx_standard_normal_cdf(x):
    """Phi(x) ~ 0.5 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), the approximation ADM uses."""
    xp = get_array_module(x)
    return 0.5 * (1.0 + xp.tanh(_K * (x + 0.044715 * x * x * x)))


def approx_standard_normal_cdf_grad(x):
    """d approx_standard_normal_cdf / dx."""
    xp = get_array_module(x)
    th = xp.tanh(_K * (x + 0.044715 * x * x * x))
    # cdf = 0.5 (1 + tanh(k (x + 0.044715 x^3)))
    return 0.5 * (1.0 - th * th) * _K * (1.0 + 3 * 0.044715 * x * x)


def discretized_gaussian_log_likelihood(x, means, log_scales):
    """log p(x) per element: the Gaussian N(means, e^(2 log_scales)) integrated over the bin
    x +- 1/255, with the outer bins open to -inf (x < -0.999) and +inf (x > 0.999) (docs/paper.md §3.4).
    Every log argument is clamped to >= 1e-12. All arrays share one shape.
    """
    xp = get_array_module(x, means)
    centered_x = x - means
    inv_stdv = xp.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered_x + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered_x - 1.0 / 255.0))
    log_cdf_plus = xp.log(xp.maximum(cdf_plus, _CLAMP))
    log_one_minus_cdf_min = xp.log(xp.maximum(1.0 - cdf_min, _CLAMP))
    log_cdf_delta = xp.log(xp.maximum(cdf_plus - cdf_min, _CLAMP))
    return xp.where(x < -0.999, log_cdf_plus,
                    xp.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


# exercise: 3.1 Preliminaries: diffusion formulation
def discretized_gaussian_log_likelihood_grad_log_scales(x, means, log_scales):
    """d discretized_gaussian_log_likelihood / d log_scales per element.

    Where a clamp is active the log is the constant log(1e-12), so its gradient is zero there
    (the boolean masks below; the divisions use the clamped values so they stay finite).
    """
    xp = get_array_module(x, means)
    centered_x = x - means
    inv_stdv = xp.exp(-log_scales)
    plus_in = inv_stdv * (centered_x + 1.0 / 255.0)
    min_in = inv_stdv * (centered_x - 1.0 / 255.0)
    cdf_plus = approx_standard_normal_cdf(plus_in)
    cdf_min = approx_standard_normal_cdf(min_in)
    # plus_in = exp(-log_scales) (x - means + 1/255), so d plus_in / d log_scales = -plus_in
    d_cdf_plus = approx_standard_normal_cdf_grad(plus_in) * -plus_in
    # min_in = exp(-log_scales) (x - means - 1/255)
    d_cdf_min = approx_standard_normal_cdf_grad(min_in) * -min_in
    # log_cdf_plus = log(max(cdf_plus, 1e-12))
    d_log_cdf_plus = (cdf_plus >= _CLAMP) * d_cdf_plus / xp.maximum(cdf_plus, _CLAMP)
    # log_one_minus_cdf_min = log(max(1 - cdf_min, 1e-12))
    one_minus = 1.0 - cdf_min
    d_log_one_minus = (one_minus >= _CLAMP) * -d_cdf_min / xp.maximum(one_minus, _CLAMP)
    # log_cdf_delta = log(max(cdf_plus - cdf_min, 1e-12))
    delta = cdf_plus - cdf_min
    d_log_delta = (delta >= _CLAMP) * (d_cdf_plus - d_cdf_min) / xp.maximum(delta, _CLAMP)
    # log_probs = where(x < -0.999, log_cdf_plus, where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))
    return xp.where(x < -0.999, d_log_cdf_plus, xp.where(x > 0.999, d_log_one_minus, d_log_delta))


def training_losses(diffusion, model_output, x_start, x_t, t, noise, dloss=None, mse_weight=None):
    """The loss DiT trains with (LossType.MSE, docs/paper.md §3.4) and its gradient on model_output.

    model_output: (N, 2C, H, W) = [eps_hat, v] (learn_sigma) or (N, C, H, W) = eps_hat;
    x_start, x_t, noise: (N, C, H, W), with x_t = diffusion.q_sample(x_start, t, noise);
    t: (N,) indices into this diffusion; dloss: (N,) upstream gradient of each sample's loss,
    default 1/N, i.e. the gradient of loss.mean() over the batch.
    Returns dict: mse, vb (learn_sigma only) and loss = mse + vb, each (N,), and grad =
    d sum_n(dloss_n loss_n) / d model_output, shaped like model_output.
    vb is in bits per dimension with no 1/1000 factor; it uses stop_grad(eps_hat).
    On a respaced chain the model output must come from the model called at timestep_map[t].
    mse_weight: None (DiT), or (N,) per-sample weights w_n of the mse term, as Min-SNR weighting
    sets them (minidit.diffusion.objectives): then loss = w mse + vb, "mse" stays unweighted and
    the noise channels' gradient is w_n times the plain one; vb and its gradient are unchanged.
    """
    xp = get_array_module(x_start)
    N, C = x_start.shape[:2]
    t = diffusion.indices(t, N)  # host or device, as given: see vb_bits_and_grad
    if dloss is None:
        dloss = xp.full((N,), 1.0 / N, dtype=x_start.dtype)
    dloss = xp.asarray(dloss).reshape(N)

    # L_simple: mse = mean_{CHW} (eps_hat - noise)^2 per sample, the MSE layer of minidit.layers
    # (for x0- or v-prediction the target is x_0 or v instead of the noise)
    target = noise if diffusion.prediction == "eps" else diffusion.prediction_target(x_start, noise, t)
    mse, c_mse = mse_forward(model_output[:, :C], target, per_sample=True)
    if mse_weight is None:
        d_eps, simple = mse_backward(dloss, c_mse), mse
    else:
        # simple = w mse: the weight scales the upstream gradient of each sample's mse
        w = xp.asarray(mse_weight).reshape(N)
        d_eps, simple = mse_backward(dloss * w, c_mse), w * mse
    if not diffusion.learn_sigma:
        return {"loss": simple, "mse": mse, "grad": d_eps}

    vb, d_v = vb_bits_and_grad(diffusion, model_output, x_start, x_t, t, dloss)
    return {"loss": simple + vb, "mse": mse, "vb": vb, "grad": xp.concatenate([d_eps, d_v], axis=1)}


# exercise: 3.1 Preliminaries: diffusion formulation
def vb_bits_and_grad(diffusion, model_output, x_start, x_t, t, dloss):
    """The L_vlb term of the hybrid loss per sample, vb (N,), and its gradient d_v (N, C, H, W)
    on the v channels of model_output (N, 2C, H, W) = [eps_hat, v].

    With the model's reverse step p = diffusion.p_mean_variance(model_output, x_t, t) (mean,
    log_variance) and the true posterior q = diffusion.q_posterior_mean_variance(x_start, x_t, t),
    each element's term is normal_kl(q mean, q log-variance, p mean, p log-variance) where t > 0
    and the decoder NLL -discretized_gaussian_log_likelihood(x_start, p mean, 0.5 p log-variance)
    where t == 0; vb = the mean of the terms over C, H, W, divided by ln 2 (bits).
    The gradient treats eps_hat as a constant (stop-gradient: only v gets a gradient), is
    d sum_n(dloss_n vb_n) / d v, and goes through log_variance = frac max_log + (1 - frac)
    min_log, frac = (v + 1) / 2, with (min_log, max_log) = diffusion.log_variance_range(t, x_t).
    t: (N,) indices into this diffusion (NumPy on the host, or on x's device); dloss: (N,).
    Returns (vb, d_v).
    """
    xp = get_array_module(x_start)
    axes = tuple(range(1, x_start.ndim))
    M = x_start[0].size  # C*H*W: the means are over these
    # The model mean depends only on eps_hat, taken as a constant here (the stop-gradient).
    out = diffusion.p_mean_variance(model_output, x_t, t, clip_denoised=False)
    mean, log_var = out["mean"], out["log_variance"]
    true_mean, _, true_log_var = diffusion.q_posterior_mean_variance(x_start, x_t, t)
    # Per element: the KL for t > 0, the decoder NLL for t = 0. The NLL is computed only on the
    # rows at t = 0 (about one sample in a thousand), not on the whole batch.
    elem = normal_kl(true_mean, true_log_var, mean, log_var)
    # kl = normal_kl(true_mean, true_log_var, mean, log_var)
    d_log_var = normal_kl_grad_logvar2(true_mean, true_log_var, mean, log_var)
    if get_array_module(t) is np:  # on the host: the NLL only for the rows at t = 0 (1 in 1000)
        rows = np.flatnonzero(t == 0)
        if rows.size:
            r = xp.asarray(rows)
            x0, mu, half_lv = x_start[r], mean[r], 0.5 * log_var[r]
            elem[r] = -discretized_gaussian_log_likelihood(x0, mu, half_lv)
            # nll = -discretized_gaussian_log_likelihood(x_start, mean, 0.5 log_var)
            d_log_var[r] = -0.5 * discretized_gaussian_log_likelihood_grad_log_scales(x0, mu, half_lv)
    else:  # on the device: finding the rows would cost a sync, so every element gets the NLL,
        # and where() keeps it at t = 0 (the same numbers, a few more element-wise passes)
        first = (t == 0).reshape((-1,) + (1,) * (x_start.ndim - 1))
        half_lv = 0.5 * log_var
        elem = xp.where(first, -discretized_gaussian_log_likelihood(x_start, mean, half_lv), elem)
        d_log_var = xp.where(first, -0.5 * discretized_gaussian_log_likelihood_grad_log_scales(
            x_start, mean, half_lv), d_log_var)
    vb = elem.mean(axis=axes) / LN2
    # vb = mean_{CHW} where(t == 0, nll, kl) / ln 2
    d_log_var *= dloss.reshape((-1,) + (1,) * (x_start.ndim - 1)) / (M * LN2)
    # log_var = frac max_log + (1 - frac) min_log, frac = (v + 1) / 2
    min_log, max_log = diffusion.log_variance_range(t, x_t)
    d_v = d_log_var * 0.5 * (max_log - min_log)
    return vb, d_v


_vb_bits_and_grad = vb_bits_and_grad  # the name notebook 05 shows
