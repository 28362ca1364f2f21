"""Gaussian diffusion as DiT uses it (paper section 3.1, docs/paper.md §3): the linear schedule and its
respacing (schedule.py), forward noising, the learned-variance reverse process and the DDPM and
DDIM samplers (gaussian.py), and the hybrid loss L_simple + L_vlb with its gradient (losses.py).
"""
from .gaussian import GaussianDiffusion
from .losses import training_losses
from .schedule import create_diffusion, get_named_beta_schedule, space_timesteps

__all__ = ["GaussianDiffusion", "create_diffusion", "get_named_beta_schedule", "space_timesteps",
           "training_losses"]
