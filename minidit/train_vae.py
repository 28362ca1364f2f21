"""`python -m minidit.train_vae`: the VAE training command (the first stage of latent diffusion).
The code is in minidit/latent/train_vae.py; this file only keeps the command short to type."""
import sys

from . import loading_command

with loading_command("python -m minidit.train_vae", __name__):
    from .latent.train_vae import main

if __name__ == "__main__":
    sys.exit(main())
