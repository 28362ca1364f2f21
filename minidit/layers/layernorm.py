"""LayerNorm over the last (feature) axis; DiT uses eps = 1e-6 and no affine (docs/paper.md §1.5).

With affine parameters (gamma, beta) it is the standard ViT LayerNorm, which the in-context
and cross-attention block designs use.
"""
from functools import partial
from typing import NamedTuple

from .. import fused
from ..backend import get_array_module


class LayerNormCache(NamedTuple):
    """The normalised input and 1/std per row (cheap statistics, as in llm.c), and gamma or None."""
    xhat: object
    rstd: object
    gamma: object


# exercise: 3.2 DiT block design
@fused.on_gpu(partial(fused.layernorm_forward, cache=LayerNormCache._make))
def layernorm_forward(x, gamma=None, beta=None, eps=1e-6):
    """x (..., D), gamma/beta (D,) or None -> out (..., D), cache.

    The cache keeps the normalised input and 1/std per row (cheap statistics, as in llm.c),
    not the centred input.
    """
    xp = get_array_module(x)
    mean = x.mean(axis=-1, keepdims=True)  # (..., 1)
    xc = x - mean
    var = (xc * xc).mean(axis=-1, keepdims=True)  # biased variance, as torch
    rstd = 1.0 / xp.sqrt(var + eps)  # (..., 1)
    xhat = xc
    xhat *= rstd  # (x - mean) / std, in the buffer of xc
    out = xhat if gamma is None else xhat * gamma + beta
    return out, LayerNormCache(xhat, rstd, gamma)


# exercise: 3.2 DiT block design
@fused.on_gpu(fused.layernorm_backward)
def layernorm_backward(dout, cache):
    """dout (..., D) -> dx (..., D), dgamma (D,) or None, dbeta (D,) or None."""
    xhat, rstd, gamma = cache
    D = xhat.shape[-1]
    dgamma = dbeta = None
    if gamma is not None:
        # out = xhat * gamma + beta
        dgamma = (dout * xhat).reshape(-1, D).sum(axis=0)
        dbeta = dout.reshape(-1, D).sum(axis=0)
        dxhat = dout * gamma
    else:
        dxhat = dout
    # xhat = (x - mean) * rstd, with mean and rstd functions of the same row of x:
    # dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
    dx = dxhat - dxhat.mean(axis=-1, keepdims=True)
    dx -= xhat * (dxhat * xhat).mean(axis=-1, keepdims=True)
    dx *= rstd
    return dx, dgamma, dbeta
