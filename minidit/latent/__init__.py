"""Latent diffusion's first stage (paper section 3.1, docs/paper.md §4.2): the blocks of a miniature
Stable-Diffusion VAE (vae_blocks.py), the autoencoder with its loss and the encoder/decoder the
DiT commands use (autoencoder.py), and its training command (train_vae.py).
"""
