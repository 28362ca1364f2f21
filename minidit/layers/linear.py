"""Linear layer y = x @ w + b, the workhorse of every DiT part (qkv, proj, MLP, adaLN, decoder).

Weights are stored (D_in, D_out), the transpose of PyTorch's nn.Linear, so the forward is one
matrix product over all leading axes flattened together.
"""
from typing import NamedTuple


class LinearCache(NamedTuple):
    """What the backward needs: the input itself (not a copy), the weight, whether b was given."""
    x: object
    w: object
    has_bias: bool


# exercise: 3.2 DiT block design
def linear_forward(x, w, b=None):
    """x (..., Din), w (Din, Dout), b (Dout,) or None -> out (..., Dout), cache.

    cache = LinearCache(x, w, b is not None). When x's last axis is not Din, raise a ValueError
    whose message names the mismatch in "features" (e.g. "input has 3 features, weight expects 5").
    """
    din, dout_ = w.shape
    if x.shape[-1] != din:
        raise ValueError(f"linear: input has {x.shape[-1]} features, weight expects {din}")
    x2 = x.reshape(-1, din)
    out = x2 @ w  # (M, Dout), one GEMM over batch and tokens together
    if b is not None:
        out += b
    return out.reshape(*x.shape[:-1], dout_), LinearCache(x, w, b is not None)


# exercise: 3.2 DiT block design
def linear_backward(dout, cache, need_dx=True):
    """dout (..., Dout) -> dx (..., Din) (None if not need_dx), dw (Din, Dout), db (Dout,) or None."""
    x, w, has_b = cache
    din, dout_ = w.shape
    d2 = dout.reshape(-1, dout_)  # (M, Dout)
    # out = x @ w  =>  dx = dout @ w^T, dw = x^T @ dout
    dx = (d2 @ w.T).reshape(x.shape) if need_dx else None
    dw = x.reshape(-1, din).T @ d2
    # out += b  (b broadcast over the M rows)  =>  db = sum of dout over rows
    db = d2.sum(axis=0) if has_b else None
    return dx, dw, db


