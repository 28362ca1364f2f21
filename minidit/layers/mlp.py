"""The transformer MLP of every DiT block (timm's Mlp, docs/paper.md §1.5):
fc1 (D -> 4D) -> GELU (tanh approximation) -> fc2 (4D -> D).
"""
from .activations import gelu_forward, gelu_backward
from .linear import linear_forward, linear_backward


def mlp_forward(x, fc1_w, fc1_b, fc2_w, fc2_b):
    """x (N, T, D); fc1_w (D, 4D), fc1_b (4D,), fc2_w (4D, D), fc2_b (D,) -> out (N, T, D)."""
    h, c1 = linear_forward(x, fc1_w, fc1_b)  # (N, T, 4D)
    a, cg = gelu_forward(h)
    out, c2 = linear_forward(a, fc2_w, fc2_b)  # (N, T, D)
    return out, (c1, cg, c2)


def mlp_backward(dout, cache):
    """dout (N, T, D) -> dx, dfc1_w, dfc1_b, dfc2_w, dfc2_b."""
    c1, cg, c2 = cache
    # out = a @ fc2_w + fc2_b
    da, dfc2_w, dfc2_b = linear_backward(dout, c2)
    # a = gelu(h)
    dh = gelu_backward(da, cg)
    # h = x @ fc1_w + fc1_b
    dx, dfc1_w, dfc1_b = linear_backward(dh, c1)
    return dx, dfc1_w, dfc1_b, dfc2_w, dfc2_b
