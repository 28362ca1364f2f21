"""Gaussian diffusion as DiT uses it (paper section 3.1, docs/paper.md §3): the linear schedule and its
respacing (schedule.py), forward noising, the learned-variance reverse process and the DDPM and
DDIM samplers (gaussian.py), and the hybrid loss L_simple + L_vlb with its gradient (losses.py).
After DiT: flow matching with its ODE samplers (flow.py), timestep sampling and Min-SNR weighting
(objectives.py); docs/objectives.md explains them.
"""
from .gaussian import GaussianDiffusion
from .flow import LinearFlow
from .losses import training_losses
from .objectives import DiffusionObjective, TimestepSampler, make_objective
from .schedule import create_diffusion, get_named_beta_schedule, space_timesteps

__all__ = ["DiffusionObjective", "GaussianDiffusion", "LinearFlow", "TimestepSampler", "create_diffusion",
           "get_named_beta_schedule", "make_objective", "space_timesteps", "training_losses"]
