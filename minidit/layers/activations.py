"""Element-wise nonlinearities of DiT: GELU (tanh approximation, in the MLP), SiLU (before
every adaLN regression and inside the timestep MLP), and softmax (inside attention).
"""
import math

from ..backend import get_array_module

_GELU_K = math.sqrt(2.0 / math.pi)  # sqrt(2/pi) of the tanh approximation (PAPER.md 1.5)
_GELU_C = 0.044715


def gelu_forward(x):
    """GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). x any shape."""
    xp = get_array_module(x)
    th = xp.tanh(_GELU_K * (x + _GELU_C * x * x * x))
    out = 0.5 * x * (1.0 + th)
    return out, (x, th)


def gelu_backward(dout, cache):
    """dout like x -> dx."""
    x, th = cache
    # out = 0.5 x (1 + th), th = tanh(u), u = k (x + c x^3)
    # dout/dx = 0.5 (1 + th) + 0.5 x (1 - th^2) k (1 + 3 c x^2)
    dx = 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * (_GELU_K * (1.0 + 3.0 * _GELU_C * x * x))
    dx *= dout
    return dx


def silu_forward(x):
    """SiLU (swish): x * sigmoid(x). x any shape."""
    xp = get_array_module(x)
    s = 1.0 / (1.0 + xp.exp(-x))
    return x * s, (x, s)


def silu_backward(dout, cache):
    """dout like x -> dx."""
    x, s = cache
    # out = x * s(x), s' = s (1 - s)  =>  dout/dx = s + x s (1 - s) = s (1 + x (1 - s))
    return dout * s * (1.0 + x * (1.0 - s))


def softmax_forward(x, axis=-1):
    """Softmax along `axis` (the keys axis in attention). The max is subtracted for stability."""
    xp = get_array_module(x)
    e = xp.exp(x - x.max(axis=axis, keepdims=True))
    e /= e.sum(axis=axis, keepdims=True)
    return e, (e, axis)


def softmax_backward(dout, cache):
    """dout like x -> dx. Only the output y is cached: dy/dx = diag(y) - y y^T per row."""
    y, axis = cache
    # y = exp(x) / sum(exp(x))  =>  dx = y * (dout - sum(dout * y))
    dx = dout - (dout * y).sum(axis=axis, keepdims=True)
    dx *= y
    return dx
