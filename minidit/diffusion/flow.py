"""Flow matching on DiT's backbone (SiT, Ma et al. 2024; the objective of SD3): the linear path
x_t = (1 - t) x_0 + t eps from data (t = 0) to noise (t = 1), a network trained to predict its
velocity v = eps - x_0 with a plain MSE, and Euler and Heun ODE samplers from t = 1 to t = 0.
No learned variance and no variational-bound term: a flow model outputs C channels.
"""
import numpy as np

from ..backend import get_array_module, on_device_of, to_device
from ..layers import mse_backward, mse_forward
from .gaussian import starting_noise

# The model sees 999 t, so t = 0..1 covers the range of DiT's integer timesteps 0..999 and the
# sinusoidal timestep features keep the frequencies they have for the Gaussian diffusion.
TIME_SCALE = 999.0
SAMPLERS = ("euler", "heun")


def _column(t, x):
    """t (N,) -> (N, 1, ..., 1) as x's dtype on x's device, to broadcast over x."""
    t = on_device_of(x, t)
    return get_array_module(x).asarray(t).astype(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))


def interpolate(x_start, noise, t):
    """x_t = (1 - t) x_0 + t eps; x_start, noise (N, C, H, W), t (N,) in [0, 1]."""
    tc = _column(t, x_start)
    return (1 - tc) * x_start + tc * noise


def velocity_target(x_start, noise):
    """v = d x_t / dt = eps - x_0, the same at every t on the linear path; (N, C, H, W)."""
    return noise - x_start


# exercise: 3.1 After DiT: flow matching
def flow_losses(model_output, x_start, noise, dloss=None):
    """The flow-matching loss per sample and its gradient on the model output.

    model_output: (N, C, H, W), the predicted velocity v_hat; x_start (x_0) and noise (eps):
    (N, C, H, W); dloss: (N,) upstream gradient of each sample's loss, default 1/N for every
    sample (the gradient of the batch mean). The target is the path's velocity v = eps - x_0
    (velocity_target). Returns a dict with exactly three keys: "loss" and "mse", both the (N,)
    array mean over C, H, W of (v_hat - (eps - x_0))^2, and "grad" =
    d sum_n(dloss_n loss_n) / d v_hat = dloss_n 2 (v_hat - v) / (C H W), shaped like model_output.
    A model_output whose channel count is not C (e.g. 2C, a learned-variance model) raises
    ValueError("a flow model outputs the velocity only: ..."), naming both channel counts.
    """
    xp = get_array_module(x_start)
    N, C = x_start.shape[:2]
    if model_output.shape[1] != C:
        raise ValueError(f"a flow model outputs the velocity only: {C} channels, got "
                         f"{model_output.shape[1]} (train it with learn_sigma=False)")
    if dloss is None:
        dloss = xp.full((N,), 1.0 / N, dtype=x_start.dtype)
    mse, cache = mse_forward(model_output, velocity_target(x_start, noise), per_sample=True)
    # mse_n = mean_{CHW} (v_hat - v)^2
    grad = mse_backward(xp.asarray(dloss).reshape(N), cache)
    return {"loss": mse, "mse": mse, "grad": grad}


def time_grid(num_steps):
    """The S + 1 times 1 = t_0 > t_1 > ... > t_S = 0 of an S-step sampler, evenly spaced, float64."""
    if num_steps < 1:
        raise ValueError(f"number of sampling steps must be positive, got {num_steps}")
    return np.linspace(1.0, 0.0, num_steps + 1)


def velocity(model_fn, x, t):
    """The model's velocity at x and the scalar time t: model_fn(x, 999 t as (N,)) -> (N, C, H, W).

    Only the first C output channels are read, so a model with extra channels still samples."""
    xp = get_array_module(x)
    tm = xp.full((x.shape[0],), TIME_SCALE * t, dtype=x.dtype)
    return model_fn(x, tm)[:, :x.shape[1]]


def euler_step(model_fn, x, t, t_next):
    """x_{t_next} = x_t + (t_next - t) v(x_t, t): one model call. Returns (x_next, v)."""
    v = velocity(model_fn, x, t)
    return x + (t_next - t) * v, v


def heun_step(model_fn, x, t, t_next):
    """Heun's (trapezoidal) step, two model calls: an Euler guess x' = x + dt v(x, t), then
    x_next = x + dt (v(x, t) + v(x', t_next)) / 2, with dt = t_next - t. Returns (x_next, v)."""
    dt = t_next - t
    v = velocity(model_fn, x, t)
    guess = x + dt * v
    return x + (0.5 * dt) * (v + velocity(model_fn, guess, t_next)), v


class LinearFlow:
    """The flow-matching counterpart of GaussianDiffusion, with the methods training uses.

    t is continuous, a float array (N,) in [0, 1] (0: data, 1: noise); the model is called with
    model_timesteps(t) = 999 t. timesteps: a minidit.diffusion.objectives.TimestepSampler
    (None: uniform on [0, 1)).
    """

    learn_sigma = False

    def __init__(self, timesteps=None):
        self.timesteps = timesteps

    def sample_timesteps(self, rng, n, device=None):
        """(n,) float64 times in (0, 1) on `device`, from the timestep sampler (uniform by default)."""
        if self.timesteps is None:
            return to_device(rng.uniform((n,), dtype=np.float64, device="cpu"), device)
        return to_device(self.timesteps.unit(rng, n), device)

    def model_timesteps(self, t):
        return TIME_SCALE * t

    def q_sample(self, x_start, t, noise):
        return interpolate(x_start, noise, t)

    def training_losses(self, model_output, x_start, x_t, t, noise, dloss=None):
        """flow_losses (x_t and t are not needed: the target eps - x_0 is the same along the path)."""
        return flow_losses(model_output, x_start, noise, dloss)

    def sample_loop(self, model_fn, shape, num_steps, method="euler", noise=None, rng=None,
                    progress=False, callback=None, dtype=np.float32, device=None):
        """Integrate dx/dt = v(x, t) from t = 1 (noise) to t = 0 in num_steps steps.

        model_fn(x, 999 t) -> (N, >=C, H, W), e.g. minidit.guidance.make_model_fn, whose guided
        output v_u + s (v_c - v_u) combines the two velocities as DiT combines the two noises.
        The starting noise is drawn from rng exactly as the Gaussian samplers draw theirs; the
        ODE needs no other randomness. callback(i, dict(sample, pred_xstart)) after each step,
        with pred_xstart = x_t - t v, the data point the current velocity points to.
        """
        if method not in SAMPLERS:
            raise ValueError(f"unknown flow sampler {method!r}: choose 'euler' or 'heun'")
        grid = time_grid(num_steps)
        step = euler_step if method == "euler" else heun_step
        x = starting_noise(shape, noise, rng, dtype, device)
        indices = range(num_steps)
        if progress:
            from tqdm.auto import tqdm
            indices = tqdm(indices)
        for i in indices:
            t, t_next = float(grid[i]), float(grid[i + 1])
            x_next, v = step(model_fn, x, t, t_next)
            if callback is not None:
                callback(i, {"sample": x_next, "pred_xstart": x - t * v})
            x = x_next
        return x
