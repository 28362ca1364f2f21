"""minidit: Diffusion Transformers (Peebles & Xie, ICCV 2023) from scratch on NumPy/CuPy."""
__version__ = "0.1.0"
