"""The Gaussian diffusion process of DiT (ADM/IDDPM code): forward noising q(x_t | x_0) and its
posterior (docs/paper.md §3.1-§3.2), the learned-range reverse process (3.5) and the DDPM and DDIM
samplers (3.6). Schedules and respacing are in schedule.py, the hybrid loss in losses.py.
"""
import numpy as np

from ..backend import get_array_module, is_gpu_array, to_numpy
from . import losses

PREDICTIONS = ("eps", "x0", "v")


def _device_of(x):
    return "gpu" if is_gpu_array(x) else "cpu"



def starting_noise(shape, noise=None, rng=None, dtype=None, device=None):
    """A sampler's x_T: `noise` when given (it must have `shape`), else drawn from rng
    (minidit.backend.Generator) with the dtype and device asked for. The flow samplers use it too,
    so a seed starts every sampler from the same noise."""
    if noise is None:
        if rng is None:
            raise ValueError("sampling needs a starting noise or an rng (minidit.backend.Generator)")
        return rng.normal(tuple(shape), dtype=dtype, device=device)
    if tuple(noise.shape) != tuple(shape):
        raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {tuple(shape)}")
    return noise

class GaussianDiffusion:
    """A diffusion chain (possibly respaced): float64 host tables and the functions that use them.

    The index t taken by every method is a position in THIS chain, 0..num_timesteps-1, given
    as an int array of shape (N,) (host or device) or a Python int. The model is always called
    with the original timestep timestep_map[t] (docs/paper.md §3.3). Arrays are NCHW. The tables are
    kept where x lives (a copy per device and dtype, made once), so a step on the GPU looks its
    coefficients up on the GPU, without a copy or a sync.
    learn_sigma=True: the model outputs (N, 2C, H, W) = [eps, v] with the LEARNED_RANGE
    variance; False: (N, C, H, W) = eps with FIXED_SMALL variance (the posterior variance).
    prediction: what the first C channels predict: "eps" the noise (DiT), "x0" the clean image,
    or "v" = sqrt(abar) eps - sqrt(1 - abar) x_0 (v-prediction, not the variance channels v).
    """

    def __init__(self, betas, learn_sigma=True, timestep_map=None, prediction="eps"):
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or len(betas) == 0 or not np.all((betas > 0) & (betas <= 1)):
            raise ValueError("betas must be a non-empty 1-D array with values in (0, 1]")
        self.betas = betas
        self.num_timesteps = T = len(betas)
        self.learn_sigma = learn_sigma
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}: choose one of {', '.join(PREDICTIONS)}")
        self.prediction = prediction
        self.timestep_map = (np.arange(T, dtype=np.int64) if timestep_map is None
                             else np.asarray(timestep_map, dtype=np.int64))

        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.alphas_cumprod_next = np.append(self.alphas_cumprod[1:], 0.0)
        # q(x_t | x_0) and x_0 = sqrt(1/abar) x_t - sqrt(1/abar - 1) eps (docs/paper.md §3.1, §3.5)
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.log_one_minus_alphas_cumprod = np.log(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)
        # q(x_{t-1} | x_t, x_0): its variance is 0 at t=0, so the log is clipped by using
        # element 1 in place of element 0. A one-step chain has no element 1; we use log beta_0
        # there (the official code fails on it).
        abar, abar_prev = self.alphas_cumprod, self.alphas_cumprod_prev
        self.posterior_variance = betas * (1.0 - abar_prev) / (1.0 - abar)
        first = self.posterior_variance[1] if T > 1 else betas[0]
        self.posterior_log_variance_clipped = np.log(np.append(first, self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(abar_prev) / (1.0 - abar)
        self.posterior_mean_coef2 = (1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar)
        self.log_betas = np.log(betas)
        self.nonzero_t = (np.arange(T) != 0).astype(np.float64)  # 1[t != 0]: no noise at the last step
        self._tables = {}  # (name, array module, dtype) -> the table there, cast

    def indices(self, t, n, like=None):
        """t as int64 indices of shape (n,), on the device of `like` (an array) when given.

        Host indices are checked to lie in 0..num_timesteps-1; device ones are checked for
        shape and type only, since reading their values would cost a device-to-host sync."""
        if get_array_module(t) is np:
            t = np.asarray(t)
            if t.ndim == 0:
                t = np.full(n, t)
            if t.dtype.kind not in "iu" or t.shape != (n,):
                raise ValueError(f"t must be {n} integer indices, got dtype {t.dtype} shape {t.shape}")
            if t.min() < 0 or t.max() >= self.num_timesteps:
                raise ValueError(f"t = {t.min()}..{t.max()} outside this diffusion's 0..{self.num_timesteps - 1}")
            t = t.astype(np.int64)
        elif t.dtype.kind not in "iu" or tuple(t.shape) != (n,):
            raise ValueError(f"t must be {n} integer indices, got dtype {t.dtype} shape {tuple(t.shape)}")
        if like is None:
            return t
        xp = get_array_module(like)
        if get_array_module(t) is xp:
            return t
        return xp.asarray(t) if xp is not np else np.asarray(to_numpy(t))

    def gather(self, name, t, x):
        """table[t] for the table called `name`, cast to x's dtype, on x's device, shaped
        (N, 1, ..., 1) to broadcast over x; t as indices() returns it for x.

        Like the official `_extract_into_tensor`, the float64 table is cast before any arithmetic,
        except that we cast to x's dtype (float32 in training, float64 in gradient checks) where
        the official code always uses float32 (docs/paper.md §3.2, pitfall 5.10).
        """
        xp = get_array_module(x)
        key = (name, xp.__name__, np.dtype(x.dtype).str)
        if key not in self._tables:
            self._tables[key] = xp.asarray(getattr(self, name).astype(x.dtype))
        return self._tables[key][t].reshape((-1,) + (1,) * (x.ndim - 1))

    # exercise: 3.1 Preliminaries: diffusion formulation
    def q_sample(self, x_start, t, noise):
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps; all arrays (N, C, H, W)."""
        t = self.indices(t, x_start.shape[0], like=x_start)
        return (self.gather("sqrt_alphas_cumprod", t, x_start) * x_start
                + self.gather("sqrt_one_minus_alphas_cumprod", t, x_start) * noise)

    # exercise: 3.1 Preliminaries: diffusion formulation
    def q_posterior_mean_variance(self, x_start, x_t, t):
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0), each (N, C, H, W)."""
        t = self.indices(t, x_start.shape[0], like=x_start)
        mean = (self.gather("posterior_mean_coef1", t, x_t) * x_start
                + self.gather("posterior_mean_coef2", t, x_t) * x_t)
        zeros = get_array_module(x_t).zeros_like(x_t)
        variance = self.gather("posterior_variance", t, x_t) + zeros
        log_variance = self.gather("posterior_log_variance_clipped", t, x_t) + zeros
        return mean, variance, log_variance

    def log_variance_range(self, t, x):
        """(min_log, max_log) = (log of clipped beta~_t, log beta_t), each (N, 1, 1, 1) as x's dtype."""
        t = self.indices(t, x.shape[0], like=x)
        return (self.gather("posterior_log_variance_clipped", t, x),
                self.gather("log_betas", t, x))

    def pred_xstart_from(self, pred, x_t, t):
        """The x_0 a prediction (N, C, H, W) of kind self.prediction implies at x_t (N, C, H, W)."""
        if self.prediction == "x0":
            return pred
        t = self.indices(t, x_t.shape[0], like=x_t)
        if self.prediction == "v":  # x_0 = sqrt(abar) x_t - sqrt(1 - abar) v
            return (self.gather("sqrt_alphas_cumprod", t, x_t) * x_t
                    - self.gather("sqrt_one_minus_alphas_cumprod", t, x_t) * pred)
        # x_0 = sqrt(1/abar) x_t - sqrt(1/abar - 1) eps
        return (self.gather("sqrt_recip_alphas_cumprod", t, x_t) * x_t
                - self.gather("sqrt_recipm1_alphas_cumprod", t, x_t) * pred)

    def prediction_target(self, x_start, noise, t):
        """What the model's first C channels should output: eps, x_0 or v (N, C, H, W)."""
        if self.prediction == "eps":
            return noise
        if self.prediction == "x0":
            return x_start
        t = self.indices(t, x_start.shape[0], like=x_start)
        return (self.gather("sqrt_alphas_cumprod", t, x_start) * noise
                - self.gather("sqrt_one_minus_alphas_cumprod", t, x_start) * x_start)

    # exercise: 3.1 Preliminaries: diffusion formulation
    def p_mean_variance(self, model_output, x_t, t, clip_denoised=False):
        """The reverse step p(x_{t-1} | x_t) the model output defines (docs/paper.md §3.5).

        model_output: (N, 2C, H, W) = [eps_hat, v] when learn_sigma, else (N, C, H, W) = eps_hat
        (x0_hat or v_hat in place of eps_hat for the other predictions; self.pred_xstart_from
        turns any of them into x_0). Returns a dict of (N, C, H, W) arrays: mean, variance,
        log_variance, pred_xstart.
        learn_sigma=False uses FIXED_SMALL: the posterior variance, with its clipped log (the
        official create_diffusion would pick FIXED_LARGE here; DiT itself always learns sigma).
        """
        xp = get_array_module(x_t)
        t = self.indices(t, x_t.shape[0], like=x_t)
        C = x_t.shape[1]
        expected = 2 * C if self.learn_sigma else C
        if model_output.shape[1] != expected:
            raise ValueError(f"model_output has {model_output.shape[1]} channels, expected {expected}")
        eps = model_output[:, :C]
        if self.learn_sigma:
            # LEARNED_RANGE: interpolate log-variances between beta~_t and beta_t; v is not clamped.
            min_log, max_log = self.log_variance_range(t, x_t)
            frac = (model_output[:, C:] + 1) / 2
            log_variance = frac * max_log + (1 - frac) * min_log
            variance = xp.exp(log_variance)
        else:
            variance = self.gather("posterior_variance", t, x_t) + xp.zeros_like(x_t)
            log_variance = self.gather("posterior_log_variance_clipped", t, x_t) + xp.zeros_like(x_t)
        pred_xstart = self.pred_xstart_from(eps, x_t, t)
        if clip_denoised:
            pred_xstart = xp.clip(pred_xstart, -1, 1)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x_t, t)
        return {"mean": mean, "variance": variance, "log_variance": log_variance,
                "pred_xstart": pred_xstart}

    def training_losses(self, model_output, x_start, x_t, t, noise, dloss=None, mse_weight=None):
        """Per-sample loss terms and the gradient on model_output; see losses.training_losses."""
        return losses.training_losses(self, model_output, x_start, x_t, t, noise, dloss, mse_weight)

    def sample_timesteps(self, rng, n, device=None):
        """t ~ U{0..T-1}, (n,) int64 indices on `device`, drawn as the official train.py draws them
        (the paper companion, docs/paper.md, section 3.4). Others: minidit.diffusion.objectives."""
        return rng.integers(0, self.num_timesteps, (n,), device=device)

    def model_timesteps(self, t):
        """The timesteps the model is called with for chain indices t: timestep_map[t], as int64
        on t's device (the indices themselves on the unrespaced chain of training)."""
        xp = get_array_module(t)
        key = ("timestep_map", xp.__name__, "int64")
        if key not in self._tables:
            self._tables[key] = xp.asarray(self.timestep_map)
        return self._tables[key][t]

    def _call_model(self, model_fn, x, t):
        """model_fn(x, original timesteps as int64 on x's device) (docs/paper.md §3.3)."""
        return model_fn(x, self.model_timesteps(t))  # t is on x's device (indices(like=x))

    @staticmethod
    def _step_noise(x, noise, rng):
        if noise is not None:
            return noise
        if rng is None:
            raise ValueError("a sampling step needs noise or an rng (minidit.backend.Generator)")
        return rng.normal(x.shape, dtype=x.dtype, device=_device_of(x))

    # exercise: 3.1 Preliminaries: diffusion formulation
    def p_sample(self, model_fn, x, t, clip_denoised=False, noise=None, rng=None):
        """One ancestral step x_t -> x_{t-1} = mu + 1[t != 0] sigma z (docs/paper.md §3.6).

        x: (N, C, H, W); t: respaced indices (N,) or an int; z is `noise` if given, else one
        rng.normal(x.shape) drawn after the model call, also at t = 0 (as official), so a seed
        fixes the whole run. Returns dict(sample, pred_xstart).
        """
        t = self.indices(t, x.shape[0], like=x)
        out = self.p_mean_variance(self._call_model(model_fn, x, t), x, t, clip_denoised)
        z = self._step_noise(x, noise, rng)
        nonzero = self.gather("nonzero_t", t, x)
        sample = out["mean"] + nonzero * get_array_module(x).exp(0.5 * out["log_variance"]) * z
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    # exercise: 3.1 Preliminaries: diffusion formulation
    def ddim_sample(self, model_fn, x, t, clip_denoised=False, eta=0.0, noise=None, rng=None):
        """One DDIM step x_t -> x_{t-1} (docs/paper.md §3.6); the learned variance is unused.

        z is drawn (or taken from `noise`) at every step, even for eta = 0, as official.
        Returns dict(sample, pred_xstart).
        """
        xp = get_array_module(x)
        t = self.indices(t, x.shape[0], like=x)
        out = self.p_mean_variance(self._call_model(model_fn, x, t), x, t, clip_denoised)
        # eps re-derived from the (possibly clipped) x0 prediction
        eps = ((self.gather("sqrt_recip_alphas_cumprod", t, x) * x - out["pred_xstart"])
               / self.gather("sqrt_recipm1_alphas_cumprod", t, x))
        abar = self.gather("alphas_cumprod", t, x)
        abar_prev = self.gather("alphas_cumprod_prev", t, x)
        sigma = eta * xp.sqrt((1 - abar_prev) / (1 - abar)) * xp.sqrt(1 - abar / abar_prev)
        z = self._step_noise(x, noise, rng)
        mean = out["pred_xstart"] * xp.sqrt(abar_prev) + xp.sqrt(1 - abar_prev - sigma ** 2) * eps
        nonzero = self.gather("nonzero_t", t, x)
        return {"sample": mean + nonzero * sigma * z, "pred_xstart": out["pred_xstart"]}

    def _loop(self, step, shape, noise, rng, dtype, device, progress, callback):
        """Run `step(x, t)` for t = S-1 .. 0 from the given or drawn starting noise."""
        x = starting_noise(shape, noise, rng, dtype, device)
        indices = list(range(self.num_timesteps))[::-1]
        if progress:
            from tqdm.auto import tqdm
            indices = tqdm(indices)
        for i in indices:
            out = step(x, np.full(shape[0], i, dtype=np.int64))
            if callback is not None:
                callback(i, out)
            x = out["sample"]
        return x

    def p_sample_loop(self, model_fn, shape, noise=None, rng=None, clip_denoised=False,
                      progress=False, callback=None, dtype=np.float32, device=None):
        """Ancestral sampling over all steps of this chain; returns x_0 of shape `shape`.

        Draw order: the starting noise (unless given) from rng, then one z per step.
        callback(i, dict(sample, pred_xstart)) is called after each step, e.g. to record
        intermediates. dtype/device apply only when the starting noise is drawn here.
        """
        def step(x, t):
            return self.p_sample(model_fn, x, t, clip_denoised, rng=rng)
        return self._loop(step, shape, noise, rng, dtype, device, progress, callback)

    def ddim_sample_loop(self, model_fn, shape, noise=None, rng=None, clip_denoised=False, eta=0.0,
                         progress=False, callback=None, dtype=np.float32, device=None):
        """DDIM sampling over all steps of this chain (use a "ddimN" respacing); see p_sample_loop."""
        def step(x, t):
            return self.ddim_sample(model_fn, x, t, clip_denoised, eta, rng=rng)
        return self._loop(step, shape, noise, rng, dtype, device, progress, callback)
