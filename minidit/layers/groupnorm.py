"""GroupNorm (Wu & He, 2018), the normalisation of the Stable Diffusion VAE that latent
diffusion encodes with (paper section 3.1, docs/paper.md §4.2): eps 1e-6, affine per channel.

The channels are split into G groups and each (image, group) is normalised over its C/G
channels and all H x W positions, so the statistics never mix images of a batch.
"""
from .layernorm import LayerNormCache, layernorm_backward, layernorm_forward


def groupnorm_forward(x, gamma, beta, num_groups, eps=1e-6):
    """x (N, C, H, W), gamma/beta (C,) -> out (N, C, H, W), cache. C must be divisible by G.

    Each (image, group) row of C/G*H*W entries is normalised by the LayerNorm of layernorm.py
    (no affine); the cache keeps its normalised input and 1/std per group.
    """
    N, C, H, W = x.shape
    if C % num_groups:
        raise ValueError(f"groupnorm: {C} channels do not split into {num_groups} groups")
    xg, c_ln = layernorm_forward(x.reshape(N, num_groups, -1), eps=eps)  # (N, G, C/G*H*W)
    xhat = xg.reshape(N, C, H, W)
    out = xhat * gamma[:, None, None] + beta[:, None, None]
    return out, (xhat, c_ln.rstd, gamma, num_groups)


def groupnorm_backward(dout, cache):
    """dout (N, C, H, W) -> dx (N, C, H, W), dgamma (C,), dbeta (C,)."""
    xhat, rstd, gamma, G = cache
    N, C, H, W = xhat.shape
    # out = xhat * gamma + beta   (per channel)
    dgamma = (dout * xhat).sum(axis=(0, 2, 3))
    dbeta = dout.sum(axis=(0, 2, 3))
    dxhat = (dout * gamma[:, None, None]).reshape(N, G, -1)
    # xhat = LayerNorm of each group's row: its backward
    dx = layernorm_backward(dxhat, LayerNormCache(xhat.reshape(N, G, -1), rstd, None))[0]
    return dx.reshape(N, C, H, W), dgamma, dbeta
