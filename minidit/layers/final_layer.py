"""The final layer of DiT (paper section 3.2 "Transformer decoder", docs/paper.md §1.6): LayerNorm,
modulated by c in the adaptive designs, then a linear map of each token to p*p*C_out values.

adaptive:  [shift, scale] = silu(c) @ ada_w + ada_b;  out = modulate(LN(x), shift, scale) @ w + b
plain:     out = LN(x) @ w + b          (in-context and cross-attention; c is not used)
The unpatchify that turns the tokens into an image follows in the model.
"""
from ..backend import get_array_module
from .activations import silu_backward, silu_forward
from .layernorm import layernorm_backward, layernorm_forward
from .linear import linear_backward, linear_forward
from .modulate import modulate_backward, modulate_forward


def final_layer_forward(x, c, w, b, ada_w=None, ada_b=None, eps=1e-6):
    """x (N, T, D), c (N, D); w (D, F), b (F,); ada_w (D, 2D), ada_b (2D,) or None -> (N, T, F)."""
    h, c_ln = layernorm_forward(x, eps=eps)  # no affine, eps 1e-6 (docs/paper.md §1.5)
    c_silu = c_mod = c_m = None
    if ada_w is not None:
        sc, c_silu = silu_forward(c)
        mod, c_mod = linear_forward(sc, ada_w, ada_b)
        shift, scale = get_array_module(x).split(mod, 2, axis=1)  # chunk order [shift, scale]
        h, c_m = modulate_forward(h, shift, scale)
    out, c_lin = linear_forward(h, w, b)
    return out, (c_ln, c_silu, c_mod, c_m, c_lin)


# exercise: 3.2 Transformer decoder
def final_layer_backward(dout, cache):
    """dout (N, T, F) -> dx (N, T, D), dc (N, D) or None, dw, db, dada_w, dada_b (None if plain)."""
    c_ln, c_silu, c_mod, c_m, c_lin = cache
    # out = h @ w + b
    dh, dw, db = linear_backward(dout, c_lin)
    dc = dada_w = dada_b = None
    if c_m is not None:
        # h = modulate(LN(x), shift, scale)
        dh, dshift, dscale = modulate_backward(dh, c_m)
        # [shift, scale] = silu(c) @ ada_w + ada_b
        dmod = get_array_module(dout).concatenate([dshift, dscale], axis=1)
        dsc, dada_w, dada_b = linear_backward(dmod, c_mod)
        # sc = silu(c)
        dc = silu_backward(dsc, c_silu)
    # h = LN(x)
    dx = layernorm_backward(dh, c_ln)[0]
    return dx, dc, dw, db, dada_w, dada_b
