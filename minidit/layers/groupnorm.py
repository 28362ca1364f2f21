"""GroupNorm (Wu & He, 2018), the normalisation of the Stable Diffusion VAE that latent
diffusion encodes with (paper section 3.1, docs/paper.md §4.2): eps 1e-6, affine per channel.

The channels are split into G groups and each (image, group) is normalised over its C/G
channels and all H x W positions, so the statistics never mix images of a batch.
"""
from ..backend import get_array_module


def groupnorm_forward(x, gamma, beta, num_groups, eps=1e-6):
    """x (N, C, H, W), gamma/beta (C,) -> out (N, C, H, W), cache. C must be divisible by G.

    Like layernorm.py, the cache keeps the normalised input and 1/std per group.
    """
    xp = get_array_module(x)
    N, C, H, W = x.shape
    if C % num_groups:
        raise ValueError(f"groupnorm: {C} channels do not split into {num_groups} groups")
    xg = x.reshape(N, num_groups, -1)  # (N, G, C/G*H*W)
    mean = xg.mean(axis=-1, keepdims=True)  # (N, G, 1)
    xc = xg - mean
    var = (xc * xc).mean(axis=-1, keepdims=True)  # biased variance, as torch
    rstd = 1.0 / xp.sqrt(var + eps)  # (N, G, 1)
    xhat = (xc * rstd).reshape(N, C, H, W)
    out = xhat * gamma[:, None, None] + beta[:, None, None]
    return out, (xhat, rstd, gamma, num_groups)


def groupnorm_backward(dout, cache):
    """dout (N, C, H, W) -> dx (N, C, H, W), dgamma (C,), dbeta (C,)."""
    xhat, rstd, gamma, G = cache
    N, C, H, W = xhat.shape
    # out = xhat * gamma + beta   (per channel)
    dgamma = (dout * xhat).sum(axis=(0, 2, 3))
    dbeta = dout.sum(axis=(0, 2, 3))
    dxhat = (dout * gamma[:, None, None]).reshape(N, G, -1)
    xh = xhat.reshape(N, G, -1)
    # xhat = (x - mean) * rstd over each group, the LayerNorm formula on the group's entries:
    # dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
    dx = dxhat - dxhat.mean(axis=-1, keepdims=True)
    dx -= xh * (dxhat * xh).mean(axis=-1, keepdims=True)
    dx *= rstd
    return dx.reshape(N, C, H, W), dgamma, dbeta
