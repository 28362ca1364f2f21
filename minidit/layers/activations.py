"""Element-wise nonlinearities of DiT: GELU (tanh approximation, in the MLP), SiLU (before
every adaLN regression and inside the timestep MLP), and softmax (inside attention).
"""
import math

import numpy as np

from .. import fused
from ..backend import cache_blocks, get_array_module

_GELU_K = math.sqrt(2.0 / math.pi)  # sqrt(2/pi) of the tanh approximation (docs/paper.md §1.5)
_GELU_C = 0.044715


@fused.on_gpu(fused.gelu_forward)
def gelu_forward(x):
    """GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). x any shape.

    Computed as x sigmoid(2u) with u = sqrt(2/pi) (x + 0.044715 x^3), the same function
    (0.5 (1 + tanh(u)) = sigmoid(2u)): NumPy's float32 exp took 0.6 of its tanh's time on the
    AMD EPYC where this was measured (docs/performance.md), and x / (1 + exp(-2u)) needs fewer
    passes over the array. Only x is cached; the backward recomputes the sigmoid, which costs
    less than keeping a second array of the MLP's widest activation alive until the backward
    pass. The arithmetic runs in cache-sized blocks (backend.cache_blocks): the same numbers,
    fewer trips to memory.
    """
    xp = get_array_module(x)
    out = xp.empty(x.shape, dtype=x.dtype)
    for xb, ob in cache_blocks(x, out):
        _exp_minus_2u(xb, out=ob)
        ob += 1.0
        xp.divide(xb, ob, out=ob)  # x / (1 + exp(-2u)) = x sigmoid(2u)
    return out, x


def _exp_minus_2u(x, out):
    """exp(-2u) = exp(-2k (x + c x^3)) into out, the exponent as x (-2k - 2kc x^2): fewer passes."""
    xp = get_array_module(x)
    xp.multiply(x, x, out=out)
    out *= -2.0 * _GELU_C * _GELU_K
    out -= 2.0 * _GELU_K
    out *= x  # -2u
    # exp(-2u) overflows to inf for x below about -10 in float32, where x / inf = -0 and the
    # sigmoid 1 / inf = 0 are right: no warning (np.errstate: CuPy warns of nothing)
    with np.errstate(over="ignore"):
        return xp.exp(out, out=out)


# exercise: 3.2 DiT block design
@fused.on_gpu(fused.gelu_backward)
def gelu_backward(dout, cache):
    """dout like x -> dx."""
    x = cache
    xp = get_array_module(x)
    dx = xp.empty(x.shape, dtype=x.dtype)
    for xb, db, s in cache_blocks(x, dout, dx):  # s: the block of dx, used as a buffer first
        # out = x s, s = sigmoid(2u), u = k (x + c x^3), ds/du = 2 s (1 - s)
        # dout/dx = s + x 2 s (1 - s) k (1 + 3 c x^2) = s (1 + (1 - s) 2k x (1 + 3 c x^2))
        _exp_minus_2u(xb, out=s)
        s += 1.0
        xp.divide(1.0, s, out=s)  # s = sigmoid(2u)
        slope = xb * xb
        slope *= 6.0 * _GELU_C * _GELU_K
        slope += 2.0 * _GELU_K
        slope *= xb  # 2k x (1 + 3 c x^2)
        slope *= 1.0 - s
        slope += 1.0
        slope *= s
        xp.multiply(slope, db, out=s)
    return dx


def silu_forward(x):
    """SiLU (swish): x * sigmoid(x). x any shape."""
    xp = get_array_module(x)
    s = 1.0 / (1.0 + xp.exp(-x))
    return x * s, (x, s)


# exercise: 3.2 DiT block design
def silu_backward(dout, cache):
    """dout like x -> dx."""
    x, s = cache
    # out = x * s(x), s' = s (1 - s)  =>  dout/dx = s + x s (1 - s) = s (1 + x (1 - s))
    return dout * s * (1.0 + x * (1.0 - s))


# exercise: 3.2 DiT block design
def softmax_forward(x, axis=-1):
    """Softmax along `axis` (the keys axis in attention). The max is subtracted for stability.

    x (...) -> y (same shape, each slice along `axis` sums to 1), cache = (y, axis).
    """
    xp = get_array_module(x)
    e = x - x.max(axis=axis, keepdims=True)
    xp.exp(e, out=e)
    e /= e.sum(axis=axis, keepdims=True)
    return e, (e, axis)


# exercise: 3.2 DiT block design
@fused.on_gpu(fused.softmax_backward)
def softmax_backward(dout, cache):
    """dout like x -> dx. Only the output y is cached: dy/dx = diag(y) - y y^T per row."""
    y, axis = cache
    # y = exp(x) / sum(exp(x))  =>  dx = y * (dout - sum(dout * y))
    xp = get_array_module(y)
    # the row sums of dout * y without a temporary of their size (einsum: one fused pass)
    row = xp.einsum("...k,...k->...", xp.moveaxis(dout, axis, -1), xp.moveaxis(y, axis, -1))
    row = xp.expand_dims(row, axis)
    dx = dout - row
    dx *= y
    return dx
