"""Fused GPU kernels for the element-wise chains that dominate small models on a GPU (issue 15):
GELU and its backward, the softmax backward, LayerNorm, adaLN modulation and the gated residual,
AdamW and the EMA. On a GPU each NumPy-style line is one kernel launch, and a Tiny/4 step is
launch-bound, not compute-bound; `cupy.fuse` compiles a chain of element-wise operations into
one kernel.

Each kernel sits behind the same function as its NumPy form (the `@on_gpu(...)` decorator in
minidit/layers and the optimiser): with CuPy arrays the fused form runs, with NumPy arrays the
function's own body, which stays the reference and the lesson. MINIDIT_FUSED=0 turns the fused
forms off (the autograder does, so that a student's body is what runs). Reductions (means, row
sums) stay ordinary CuPy calls; only element-wise work is fused. The fused forms agree with the
NumPy forms to float32 rounding (tests/test_fused.py), not to the bit: the order of operations
inside a kernel is the compiler's.
"""
import functools
import math
import os

from .backend import get_array_module

ENV_VAR = "MINIDIT_FUSED"
_GELU_K, _GELU_C = math.sqrt(2.0 / math.pi), 0.044715
_KERNELS = {}  # array module name -> its fused functions, compiled on first use


def enabled(x):
    """True when `x` is a GPU array and the fused forms are not turned off."""
    return get_array_module(x).__name__ != "numpy" and os.environ.get(ENV_VAR, "1") != "0"


def on_gpu(fused_form):
    """Decorate a layer function with the fused form to run for GPU arrays (same signature)."""
    def decorate(fn):
        @functools.wraps(fn)
        def dispatch(*args, **kwargs):
            if enabled(args[0] if args else next(iter(kwargs.values()))):
                return fused_form(*args, **kwargs)
            return fn(*args, **kwargs)
        dispatch.fused_form = fused_form
        return dispatch
    return decorate


def kernels(xp):
    """The fused element-wise functions of the array module xp (cupy), compiled on first use."""
    if xp.__name__ not in _KERNELS:
        _KERNELS[xp.__name__] = _build(xp)
    return _KERNELS[xp.__name__]


def _build(xp):
    tanh, sqrt = xp.tanh, xp.sqrt
    k, c = _GELU_K, _GELU_C

    def gelu(x):
        # 0.5 x (1 + tanh(k (x + c x^3)))
        return 0.5 * x * (1.0 + tanh(k * x * (1.0 + c * x * x)))

    def gelu_grad(dout, x):
        # d/dx = 0.5 (1 + th) + 0.5 x (1 - th^2) k (1 + 3 c x^2)
        th = tanh(k * x * (1.0 + c * x * x))
        return dout * (0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * k * (1.0 + 3.0 * c * x * x))

    def softmax_grad(dout, y, row):
        return y * (dout - row)

    def normalize(x, mean, rstd):
        return (x - mean) * rstd

    def affine(xhat, gamma, beta):
        return xhat * gamma + beta

    def layernorm_grad(dxhat, xhat, rstd, m1, m2):
        return rstd * (dxhat - m1 - xhat * m2)

    def modulate(x, shift, scale):
        return x * (1.0 + scale) + shift

    def gated(x, gate, branch):
        return x + gate * branch

    def adamw(p, g, m, v, decay, one_minus_b1, b2, one_minus_b2, step_size, bc2_sqrt, eps):
        p = p * decay
        m = m + one_minus_b1 * (g - m)
        v = v * b2 + one_minus_b2 * g * g
        return p - step_size * m / (sqrt(v) / bc2_sqrt + eps), m, v

    def ema(e, p, decay, one_minus_decay):
        return e * decay + p * one_minus_decay

    return {name: xp.fuse(fn) for name, fn in dict(
        gelu=gelu, gelu_grad=gelu_grad, softmax_grad=softmax_grad, normalize=normalize, affine=affine,
        layernorm_grad=layernorm_grad, modulate=modulate, gated=gated, adamw=adamw, ema=ema).items()}


# The fused forms, with the signatures of the functions they stand behind ----------------------

def gelu_forward(x):
    return kernels(get_array_module(x))["gelu"](x), x


def gelu_backward(dout, cache):
    return kernels(get_array_module(dout))["gelu_grad"](dout, cache)


def softmax_backward(dout, cache):
    y, axis = cache
    xp = get_array_module(y)
    row = xp.expand_dims(xp.einsum("...k,...k->...", xp.moveaxis(dout, axis, -1), xp.moveaxis(y, axis, -1)), axis)
    return kernels(xp)["softmax_grad"](dout, y, row)


def layernorm_forward(x, gamma=None, beta=None, eps=1e-6, cache=tuple):
    """cache: builds the layer's cache from (xhat, rstd, gamma) (LayerNormCache._make)."""
    xp = get_array_module(x)
    K = kernels(xp)
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)  # biased, as torch
    rstd = 1.0 / xp.sqrt(var + eps)
    xhat = K["normalize"](x, mean, rstd)
    out = xhat if gamma is None else K["affine"](xhat, gamma, beta)
    return out, cache((xhat, rstd, gamma))


def layernorm_backward(dout, cache):
    xhat, rstd, gamma = cache
    xp = get_array_module(dout)
    D = xhat.shape[-1]
    dgamma = dbeta = None
    dxhat = dout
    if gamma is not None:
        dgamma = (dout * xhat).reshape(-1, D).sum(axis=0)
        dbeta = dout.reshape(-1, D).sum(axis=0)
        dxhat = dout * gamma
    m1 = dxhat.mean(axis=-1, keepdims=True)
    m2 = xp.einsum("...d,...d->...", dxhat, xhat)[..., None] / D
    return kernels(xp)["layernorm_grad"](dxhat, xhat, rstd, m1, m2), dgamma, dbeta


def modulate_forward(x, shift, scale):
    return kernels(get_array_module(x))["modulate"](x, shift[:, None, :], scale[:, None, :]), (x, scale)


def gated_residual_forward(x, branch, gate):
    return kernels(get_array_module(x))["gated"](x, gate[:, None, :], branch), (branch, gate)


def adamw_update(p, g, m, v, lr, b1, b2, eps, weight_decay, step_size, bc2_sqrt):
    """One AdamW update of one parameter, in place: one fused kernel and three copies back.

    The scalars go in typed as the parameter's dtype (np.float32 for float32 weights): CuPy 13's
    fusion reads a Python float as a double and would do the float32 update in float64."""
    xp = get_array_module(p)
    f = p.dtype.type
    new_p, new_m, new_v = kernels(xp)["adamw"](p, g, m, v, f(1 - lr * weight_decay), f(1 - b1), f(b2), f(1 - b2),
                                               f(step_size), f(bc2_sqrt), f(eps))
    p[...], m[...], v[...] = new_p, new_m, new_v


def ema_update(e, p, decay):
    """e <- decay e + (1 - decay) p, in place (the scalars typed as e's dtype, as in adamw_update)."""
    f = e.dtype.type
    e[...] = kernels(get_array_module(e))["ema"](e, p, f(decay), f(1 - decay))
