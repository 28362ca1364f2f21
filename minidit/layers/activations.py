"""Element-wise nonlinearities of DiT: GELU (tanh approximation, in the MLP), SiLU (before
every adaLN regression and inside the timestep MLP), and softmax (inside attention).
"""
import math

from .. import fused
from ..backend import cache_blocks, get_array_module

_GELU_K = math.sqrt(2.0 / math.pi)  # sqrt(2/pi) of the tanh approximation (docs/paper.md §1.5)
_GELU_C = 0.044715


@fused.on_gpu(fused.gelu_forward)
def gelu_forward(x):
    """GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). x any shape.

    Only x is cached; the backward recomputes the tanh, which costs less than keeping a second
    array of the MLP's widest activation alive until the backward pass. The arithmetic runs in
    cache-sized blocks (backend.cache_blocks): the same numbers, fewer trips to memory.
    """
    xp = get_array_module(x)
    out = xp.empty(x.shape, dtype=x.dtype)
    for xb, ob in cache_blocks(x, out):
        _gelu_tanh(xb, out=ob)  # th = tanh(k (x + c x^3))
        ob += 1.0
        ob *= xb
        ob *= 0.5  # 0.5 x (1 + th)
    return out, x


def _gelu_tanh(x, out):
    """tanh(k (x + c x^3)) into out, written as k x (1 + c x^2) to need fewer passes."""
    xp = get_array_module(x)
    xp.multiply(x, x, out=out)
    out *= _GELU_C * _GELU_K
    out += _GELU_K
    out *= x  # k (x + c x^3)
    return xp.tanh(out, out=out)


# exercise: 3.2 DiT block design
@fused.on_gpu(fused.gelu_backward)
def gelu_backward(dout, cache):
    """dout like x -> dx."""
    x = cache
    xp = get_array_module(x)
    dx = xp.empty(x.shape, dtype=x.dtype)
    for xb, db, th in cache_blocks(x, dout, dx):  # th: the block of dx, used as a buffer first
        # out = 0.5 x (1 + th), th = tanh(u), u = k (x + c x^3)
        # dout/dx = 0.5 (1 + th) + 0.5 x (1 - th^2) k (1 + 3 c x^2)
        _gelu_tanh(xb, out=th)
        slope = xb * xb
        slope *= 3.0 * _GELU_C * _GELU_K
        slope += _GELU_K
        slope *= xb  # x k (1 + 3 c x^2)
        sq = th * th
        sq -= 1.0
        slope *= sq  # -x (1 - th^2) k (1 + 3 c x^2)
        th += 1.0
        th -= slope  # (1 + th) + x (1 - th^2) k (1 + 3 c x^2)
        th *= 0.5
        th *= db
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
