"""The noise schedule of DiT and the respacing of its chain (docs/paper.md §3.2-§3.3): the linear betas of
ADM, the steps a respacing such as "250" or "ddim50" keeps, and `create_diffusion`, which builds
the (respaced) GaussianDiffusion DiT trains and samples with.
"""
import math

import numpy as np

from .gaussian import GaussianDiffusion


def get_named_beta_schedule(name, num_diffusion_timesteps):
    """beta_t for t = 0..T-1 of a named schedule; float64 host array of shape (T,)."""
    T = num_diffusion_timesteps
    if name == "linear":
        # ADM scales the endpoints by 1000/T so that any T traces the same curve (docs/paper.md §3.2).
        scale = 1000 / T
        return np.linspace(scale * 1e-4, scale * 0.02, T, dtype=np.float64)
    if name == "squaredcos_cap_v2":
        # IDDPM's cosine schedule: abar(s) = cos^2((s + 0.008) / 1.008 * pi / 2), betas capped at 0.999.
        def abar(s):
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
        return np.array([min(1 - abar((i + 1) / T) / abar(i / T), 0.999) for i in range(T)])
    raise ValueError(f"unknown noise_schedule {name!r}: choose 'linear' or 'squaredcos_cap_v2'")


def _parse_count(text, spec):
    try:
        n = int(text)
    except ValueError:
        raise ValueError(f"timestep_respacing {spec!r}: {text!r} is not a whole number of steps") from None
    if n < 1:
        raise ValueError(f"timestep_respacing {spec!r}: {n} steps requested, need at least 1")
    return n


def space_timesteps(num_timesteps, section_counts):
    """The original timesteps a respacing keeps, ascending (docs/paper.md §3.3).

    section_counts: "N", "N,M,..." (or a list of ints): the T steps are cut into equal sections
    (the remainder goes to the first ones) and each section gives its count of steps at a
    fractional stride rounded with Python's round. "ddimN": range(0, T, i) for the smallest
    integer stride i that yields exactly N steps.
    """
    spec = section_counts
    if isinstance(spec, str) and spec.startswith("ddim"):
        desired = _parse_count(spec[len("ddim"):], spec)
        for stride in range(1, num_timesteps):  # the official search stops at T-1
            if len(range(0, num_timesteps, stride)) == desired:
                return list(range(0, num_timesteps, stride))
        raise ValueError(f"timestep_respacing {spec!r}: no integer stride gives exactly {desired} "
                         f"of {num_timesteps} steps")
    if isinstance(spec, str):
        counts = [_parse_count(s.strip(), spec) for s in spec.split(",")]
    else:
        counts = [_parse_count(s, spec) for s in spec]
    size_per, extra = divmod(num_timesteps, len(counts))
    start, steps = 0, []
    for i, n in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if n > size:
            raise ValueError(f"timestep_respacing {spec!r}: cannot take {n} steps from a section "
                             f"of {size} (T = {num_timesteps}, {len(counts)} sections)")
        stride = 1 if n <= 1 else (size - 1) / (n - 1)
        cur = 0.0
        for _ in range(n):
            # Accumulate the stride as the official loop does, so float ties round the same way.
            steps.append(start + round(cur))
            cur += stride
        start += size
    return sorted(set(steps))


def create_diffusion(timestep_respacing="", noise_schedule="linear", learn_sigma=True,
                     diffusion_steps=1000, prediction="eps"):
    """DiT's diffusion (docs/paper.md §3.1): always respaced, even "" (all steps), like the official code.

    timestep_respacing: "" (all steps), "N", "N,M,..." or "ddimN" (see space_timesteps).
    The betas of the kept steps s_0 < s_1 < ... are recomputed from alpha-bar:
    beta'_j = 1 - abar_{s_j} / abar_{s_{j-1}}, with abar_{s_{-1}} = 1.
    prediction: "eps" (DiT), "x0" or "v", what the model predicts (GaussianDiffusion).
    """
    if isinstance(diffusion_steps, bool) or not isinstance(diffusion_steps, (int, np.integer)) \
            or diffusion_steps < 1:
        raise ValueError(f"diffusion_steps must be a positive integer, got {diffusion_steps!r}")
    base = GaussianDiffusion(get_named_beta_schedule(noise_schedule, diffusion_steps), learn_sigma,
                             prediction=prediction)
    use = space_timesteps(diffusion_steps, timestep_respacing or str(diffusion_steps))
    kept = base.alphas_cumprod[use]
    betas = 1.0 - kept / np.append(1.0, kept[:-1])
    return GaussianDiffusion(betas, learn_sigma, timestep_map=use, prediction=prediction)
