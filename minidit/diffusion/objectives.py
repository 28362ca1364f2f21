"""Training objectives beside DiT's own: which timesteps a batch trains on (uniform, as DiT, or
logit-normal, as SD3: Esser et al. 2024), Min-SNR-gamma weighting of the mse term (Hang et al.
2023) for noise, x_0 or v prediction (gaussian.py), and `make_objective`, which builds the Gaussian diffusion or the linear flow (flow.py) that
`python -m minidit.train --objective` asks for. Each object has the methods train_step calls:
sample_timesteps, model_timesteps, q_sample and training_losses.
"""
import math

import numpy as np

from ..backend import get_array_module, to_device
from .flow import LinearFlow
from .schedule import create_diffusion

OBJECTIVES = ("ddpm", "flow")
TIMESTEP_SAMPLERS = ("uniform", "logit-normal")


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


class TimestepSampler:
    """A distribution of training times u in (0, 1), drawn on the host in float64.

    "uniform": u ~ U[0, 1). "logit-normal": u = sigmoid(n) with n ~ N(mean, std^2), whose
    density peaks near sigmoid(mean) and thins out at both ends (std = 1: about 1.4% of the draws
    fall below 0.1 and as many above 0.9, against 10% each for uniform).
    """

    def __init__(self, kind="uniform", mean=0.0, std=1.0):
        if kind not in TIMESTEP_SAMPLERS:
            raise ValueError(f"unknown timestep sampling {kind!r}: choose one of {', '.join(TIMESTEP_SAMPLERS)}")
        if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
            raise ValueError(f"logit-normal needs a finite mean and a positive std, got {mean}, {std}")
        self.kind, self.mean, self.std = kind, float(mean), float(std)

    def unit(self, rng, n):
        """(n,) float64 host times in [0, 1) (uniform) or (0, 1) (logit-normal)."""
        if self.kind == "uniform":
            return rng.uniform((n,), dtype=np.float64, device="cpu")
        return sigmoid(self.mean + self.std * rng.normal((n,), dtype=np.float64, device="cpu"))

    def discrete(self, rng, n, T, device=None):
        """(n,) int64 steps in 0..T-1: u mapped to floor(u T), so step k gets the mass of
        [k/T, (k+1)/T). Uniform draws integers directly, exactly as DiT's train.py does."""
        if self.kind == "uniform":
            return rng.integers(0, T, (n,), device=device)
        k = np.minimum(np.floor(self.unit(rng, n) * T).astype(np.int64), T - 1)
        return to_device(k, device)

    def describe(self):
        return {"timesteps": self.kind} if self.kind == "uniform" else \
            {"timesteps": self.kind, "logit_mean": self.mean, "logit_std": self.std}


def snr(alphas_cumprod):
    """Signal-to-noise ratio of x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps: abar / (1 - abar)."""
    return alphas_cumprod / (1.0 - alphas_cumprod)


def min_snr_weights(alphas_cumprod, gamma, prediction="eps"):
    """Min-SNR-gamma weights of the mse term, float64 (T,), for what the model predicts.

    At a given x_t every prediction's squared error is a multiple of the x_0 one: the eps error's
    is SNR_t times it, the v error's (SNR_t + 1) times. Min-SNR weights the x_0 error by min(SNR_t, gamma), so the mse
    of eps is weighted min(SNR_t, gamma) / SNR_t (1 on the noisy steps, gamma / SNR_t on the
    nearly clean ones, whose loss is easy to lower), that of x_0 min(SNR_t, gamma), that of v
    min(SNR_t, gamma) / (SNR_t + 1)."""
    if not (math.isfinite(gamma) and gamma > 0):
        raise ValueError(f"Min-SNR gamma must be positive, got {gamma}")
    s = snr(np.asarray(alphas_cumprod, dtype=np.float64))
    per_x0 = {"eps": s, "x0": np.ones_like(s), "v": s + 1}[prediction]
    return np.minimum(s, gamma) / per_x0


class DiffusionObjective:
    """DiT's Gaussian diffusion (its model predicting eps, x0 or v: diffusion.prediction) with a
    timestep sampler and optional Min-SNR-gamma weighting.

    With TimestepSampler("uniform") and gamma None it draws and computes exactly what the bare
    GaussianDiffusion does (the default objective, bit for bit).
    """

    def __init__(self, diffusion, timesteps=None, min_snr_gamma=None):
        self.diffusion = diffusion
        self.learn_sigma = diffusion.learn_sigma
        self.num_timesteps = diffusion.num_timesteps
        self.timesteps = timesteps or TimestepSampler()
        self.min_snr_gamma = min_snr_gamma
        self.weights = (None if min_snr_gamma is None
                        else min_snr_weights(diffusion.alphas_cumprod, min_snr_gamma, diffusion.prediction))
        self._tables = {}

    def sample_timesteps(self, rng, n, device=None):
        return self.timesteps.discrete(rng, n, self.num_timesteps, device)

    def model_timesteps(self, t):
        return self.diffusion.model_timesteps(t)

    def q_sample(self, x_start, t, noise):
        return self.diffusion.q_sample(x_start, t, noise)

    def mse_weight(self, t, x):
        """Min-SNR weights w_t for indices t, (N,) as x's dtype on x's device; None without weighting."""
        if self.weights is None:
            return None
        xp = get_array_module(x)
        key = (xp.__name__, np.dtype(x.dtype).str)
        if key not in self._tables:
            self._tables[key] = xp.asarray(self.weights.astype(x.dtype))
        return self._tables[key][self.diffusion.indices(t, x.shape[0], like=x)]

    def training_losses(self, model_output, x_start, x_t, t, noise, dloss=None):
        """losses.training_losses with loss = w_t mse + vb (w_t = 1 without weighting)."""
        return self.diffusion.training_losses(model_output, x_start, x_t, t, noise, dloss,
                                              mse_weight=self.mse_weight(t, x_start))


def make_objective(name="ddpm", learn_sigma=True, timesteps="uniform", logit_mean=0.0, logit_std=1.0,
                   min_snr_gamma=None, prediction="eps"):
    """The training objective `--objective` names, with its timestep sampling and weighting.

    "ddpm": DiT's 1000-step Gaussian diffusion (a DiffusionObjective) whose model predicts
    `prediction` ("eps", "x0" or "v"). "flow": a LinearFlow, which predicts its velocity;
    Min-SNR weighting and the other predictions belong to the Gaussian diffusion.
    """
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}: choose one of {', '.join(OBJECTIVES)}")
    sampler = TimestepSampler(timesteps, logit_mean, logit_std)
    if name == "flow":
        if min_snr_gamma is not None:
            raise ValueError("Min-SNR weighting applies to the Gaussian diffusion's noise loss, not to flow")
        if prediction != "eps":
            raise ValueError(f"a flow model predicts its velocity; prediction {prediction!r} is for ddpm")
        return LinearFlow(sampler)
    return DiffusionObjective(create_diffusion("", learn_sigma=learn_sigma, prediction=prediction), sampler,
                              min_snr_gamma)


def describe(objective):
    """What a checkpoint records of an objective: a dict of plain values (resume compares it)."""
    if isinstance(objective, LinearFlow):
        sampler = objective.timesteps or TimestepSampler()
        return {"objective": "flow", **sampler.describe()}
    out = {"objective": "ddpm", **objective.timesteps.describe()}
    if objective.diffusion.prediction != "eps":
        out["prediction"] = objective.diffusion.prediction
    if objective.min_snr_gamma is not None:
        out["min_snr_gamma"] = float(objective.min_snr_gamma)
    return out
