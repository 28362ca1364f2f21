"""Nearest-neighbour 2x upsampling, how the Stable Diffusion VAE decoder doubles the latent's
resolution before each 3x3 convolution (paper section 3.1, docs/paper.md §4.2).
"""
from ..backend import get_array_module


def upsample2x_forward(x):
    """x (N, C, H, W) -> out (N, C, 2H, 2W), out[n, c, 2i + a, 2j + b] = x[n, c, i, j]."""
    xp = get_array_module(x)
    N, C, H, W = x.shape
    out = xp.broadcast_to(x[:, :, :, None, :, None], (N, C, H, 2, W, 2))  # a view, no copy yet
    return out.reshape(N, C, 2 * H, 2 * W), (H, W)


def upsample2x_backward(dout, cache):
    """dout (N, C, 2H, 2W) -> dx (N, C, H, W): each input pixel sums its 2x2 block."""
    H, W = cache
    N, C = dout.shape[:2]
    # out[n, c, 2i + a, 2j + b] = x[n, c, i, j]
    return dout.reshape(N, C, H, 2, W, 2).sum(axis=(3, 5))
