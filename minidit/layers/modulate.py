"""adaLN modulation and the gated residual (paper section 3.2, docs/paper.md §1.5).

modulate(x, shift, scale) = x * (1 + scale) + shift, with one shift and scale per image
broadcast over the tokens; the "1 +" makes a zero scale the identity. The adaLN-Zero block
adds each branch through a gate: x + gate * branch, with the gate zero at initialisation.
"""
from .. import fused
from ..backend import get_array_module


# exercise: 3.2 DiT block design
@fused.on_gpu(fused.modulate_forward)
def modulate_forward(x, shift, scale):
    """x (N, T, D), shift (N, D), scale (N, D) -> out (N, T, D), cache = (x, scale)."""
    out = x * (1.0 + scale[:, None, :])
    out += shift[:, None, :]
    return out, (x, scale)


# exercise: 3.2 DiT block design
def modulate_backward(dout, cache):
    """dout (N, T, D) -> dx (N, T, D), dshift (N, D), dscale (N, D)."""
    x, scale = cache
    # out = x * (1 + scale) + shift, scale and shift broadcast over T
    dx = dout * (1.0 + scale[:, None, :])
    dshift = dout.sum(axis=1)
    dscale = get_array_module(x).einsum("ntd,ntd->nd", dout, x)  # sum over T of dout * x
    return dx, dshift, dscale


@fused.on_gpu(fused.gated_residual_forward)
def gated_residual_forward(x, branch, gate):
    """x (N, T, D), branch (N, T, D), gate (N, D) -> x + gate * branch (N, T, D)."""
    return x + gate[:, None, :] * branch, (branch, gate)


# exercise: 3.2 DiT block design
def gated_residual_backward(dout, cache):
    """dout (N, T, D) -> dx, dbranch (N, T, D), dgate (N, D)."""
    branch, gate = cache
    # out = x + gate * branch
    dbranch = dout * gate[:, None, :]
    dgate = get_array_module(branch).einsum("ntd,ntd->nd", dout, branch)  # sum over T
    return dout.copy(), dbranch, dgate
