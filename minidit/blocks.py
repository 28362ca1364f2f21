"""The four DiT block designs of paper section 3.2 (PAPER.md 1.5 and 1.10) and the final layer.

Each block is a forward/backward pair over a flat parameter dict `P` whose keys start with the
block's prefix (for example "blocks.3."). `cond` is what conditions the block:
  - adaLN-Zero, adaLN: c = t_emb + y_emb, (N, D), regressed into shifts, scales (and gates);
  - cross-attention:   the sequence [t_emb, y_emb], (N, 2, D), read by a cross-attention layer;
  - in-context:        None (t_emb and y_emb travel as two extra tokens of x).
Backward functions return (dx, dcond, grads) with grads keyed like P.
"""
from .backend import get_array_module
from .layers import (attention_backward, attention_forward, cross_attention_backward,
                     cross_attention_forward, gated_residual_backward, gated_residual_forward,
                     layernorm_backward, layernorm_forward, linear_backward, linear_forward,
                     mlp_backward, mlp_forward, modulate_backward, modulate_forward,
                     silu_backward, silu_forward)

LN_EPS = 1e-6  # every LayerNorm of DiT (PAPER.md 1.5)
BLOCK_DESIGNS = ("in-context", "cross-attention", "adaLN", "adaLN-Zero")


def _attn(P, pre, x, nh):
    return attention_forward(x, P[pre + "attn.qkv.w"], P[pre + "attn.qkv.b"],
                             P[pre + "attn.proj.w"], P[pre + "attn.proj.b"], nh)


def _attn_back(da, cache, pre, g):
    dx, g[pre + "attn.qkv.w"], g[pre + "attn.qkv.b"], g[pre + "attn.proj.w"], g[pre + "attn.proj.b"] = \
        attention_backward(da, cache)
    return dx


def _mlp(P, pre, x):
    return mlp_forward(x, P[pre + "mlp.fc1.w"], P[pre + "mlp.fc1.b"], P[pre + "mlp.fc2.w"], P[pre + "mlp.fc2.b"])


def _mlp_back(dm, cache, pre, g):
    dx, g[pre + "mlp.fc1.w"], g[pre + "mlp.fc1.b"], g[pre + "mlp.fc2.w"], g[pre + "mlp.fc2.b"] = \
        mlp_backward(dm, cache)
    return dx


def adaln_block_forward(P, pre, x, c, num_heads, gated=True):
    """adaLN-Zero (gated=True) or adaLN (gated=False) block. x (N, T, D), c (N, D) -> (N, T, D).

    adaLN-Zero:  x = x + gate_msa * attn(modulate(LN(x), shift_msa, scale_msa))
                 x = x + gate_mlp * mlp(modulate(LN(x), shift_mlp, scale_mlp))
    adaLN drops the two gates (plain residuals) and regresses 4 vectors instead of 6.
    """
    xp = get_array_module(x)
    sc, c_silu = silu_forward(c)  # each block applies its own SiLU to c
    mod, c_mod = linear_forward(sc, P[pre + "adaLN_modulation.1.w"], P[pre + "adaLN_modulation.1.b"])
    if gated:  # chunk order of PAPER.md 1.5
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = xp.split(mod, 6, axis=1)
    else:
        shift_msa, scale_msa, shift_mlp, scale_mlp = xp.split(mod, 4, axis=1)
    h, c_ln1 = layernorm_forward(x, eps=LN_EPS)
    h, c_m1 = modulate_forward(h, shift_msa, scale_msa)
    a, c_attn = _attn(P, pre, h, num_heads)
    x1, c_r1 = gated_residual_forward(x, a, gate_msa) if gated else (x + a, None)
    h, c_ln2 = layernorm_forward(x1, eps=LN_EPS)
    h, c_m2 = modulate_forward(h, shift_mlp, scale_mlp)
    m, c_mlp = _mlp(P, pre, h)
    out, c_r2 = gated_residual_forward(x1, m, gate_mlp) if gated else (x1 + m, None)
    return out, (pre, gated, c_silu, c_mod, c_ln1, c_m1, c_attn, c_r1, c_ln2, c_m2, c_mlp, c_r2)


def adaln_block_backward(dout, cache):
    """dout (N, T, D) -> dx (N, T, D), dc (N, D), grads."""
    pre, gated, c_silu, c_mod, c_ln1, c_m1, c_attn, c_r1, c_ln2, c_m2, c_mlp, c_r2 = cache
    xp = get_array_module(dout)
    g = {}
    # out = x1 + gate_mlp * m   (adaLN: out = x1 + m)
    dx1, dm, dgate_mlp = gated_residual_backward(dout, c_r2) if gated else (dout, dout, None)
    # m = mlp(h)
    dh = _mlp_back(dm, c_mlp, pre, g)
    # h = modulate(LN(x1), shift_mlp, scale_mlp)
    dh, dshift_mlp, dscale_mlp = modulate_backward(dh, c_m2)
    dx1 = dx1 + layernorm_backward(dh, c_ln2)[0]
    # x1 = x + gate_msa * a   (adaLN: x1 = x + a)
    dx, da, dgate_msa = gated_residual_backward(dx1, c_r1) if gated else (dx1, dx1, None)
    # a = attn(h)
    dh = _attn_back(da, c_attn, pre, g)
    # h = modulate(LN(x), shift_msa, scale_msa)
    dh, dshift_msa, dscale_msa = modulate_backward(dh, c_m1)
    dx = dx + layernorm_backward(dh, c_ln1)[0]
    # mod = silu(c) @ W + b, split into the chunks in their forward order
    parts = ([dshift_msa, dscale_msa, dgate_msa, dshift_mlp, dscale_mlp, dgate_mlp] if gated
             else [dshift_msa, dscale_msa, dshift_mlp, dscale_mlp])
    dsc, g[pre + "adaLN_modulation.1.w"], g[pre + "adaLN_modulation.1.b"] = \
        linear_backward(xp.concatenate(parts, axis=1), c_mod)
    # sc = silu(c)
    dc = silu_backward(dsc, c_silu)
    return dx, dc, g


def _ln_affine(P, pre, name, x):
    return layernorm_forward(x, P[pre + name + ".w"], P[pre + name + ".b"], eps=LN_EPS)


def _ln_affine_back(dh, cache, pre, name, g):
    dx, g[pre + name + ".w"], g[pre + name + ".b"] = layernorm_backward(dh, cache)
    return dx


def vit_block_forward(P, pre, x, ctx, num_heads):
    """A standard pre-norm ViT block, optionally with cross-attention to a context sequence.

    in-context (ctx None):    x = x + attn(LN1(x));  x = x + mlp(LN2(x))
    cross-attention:          x = x + attn(LN1(x));  x = x + xattn(LN2(x), ctx);  x = x + mlp(LN3(x))
    LayerNorms have learnable affine parameters; residuals are plain (no adaLN).
    """
    h, c_ln1 = _ln_affine(P, pre, "norm1", x)
    a, c_attn = _attn(P, pre, h, num_heads)
    x = x + a
    c_x = None
    if ctx is not None:
        h, c_lnx = _ln_affine(P, pre, "norm2", x)
        q = pre + "cross_attn."
        a, c_xa = cross_attention_forward(h, ctx, P[q + "q.w"], P[q + "q.b"], P[q + "k.w"], P[q + "k.b"],
                                          P[q + "v.w"], P[q + "v.b"], P[q + "proj.w"], P[q + "proj.b"],
                                          num_heads)
        x = x + a
        c_x = (c_lnx, c_xa)
    last = "norm3" if ctx is not None else "norm2"
    h, c_ln2 = _ln_affine(P, pre, last, x)
    m, c_mlp = _mlp(P, pre, h)
    return x + m, (pre, c_ln1, c_attn, c_x, last, c_ln2, c_mlp)


def vit_block_backward(dout, cache):
    """dout (N, T, D) -> dx (N, T, D), dctx (N, S, D) or None, grads."""
    pre, c_ln1, c_attn, c_x, last, c_ln2, c_mlp = cache
    g = {}
    # out = x + mlp(LN_last(x))
    dh = _mlp_back(dout, c_mlp, pre, g)
    dx = dout + _ln_affine_back(dh, c_ln2, pre, last, g)
    dctx = None
    if c_x is not None:
        c_lnx, c_xa = c_x
        q = pre + "cross_attn."
        # x = x + xattn(LN2(x), ctx)
        (dh, dctx, g[q + "q.w"], g[q + "q.b"], g[q + "k.w"], g[q + "k.b"], g[q + "v.w"], g[q + "v.b"],
         g[q + "proj.w"], g[q + "proj.b"]) = cross_attention_backward(dx, c_xa)
        dx = dx + _ln_affine_back(dh, c_lnx, pre, "norm2", g)
    # x = x + attn(LN1(x))
    dh = _attn_back(dx, c_attn, pre, g)
    dx = dx + _ln_affine_back(dh, c_ln1, pre, "norm1", g)
    return dx, dctx, g


def block_forward(design, P, pre, x, cond, num_heads):
    """Dispatch on the block design; see the module docstring for `cond`."""
    if design == "adaLN-Zero":
        return adaln_block_forward(P, pre, x, cond, num_heads, gated=True)
    if design == "adaLN":
        return adaln_block_forward(P, pre, x, cond, num_heads, gated=False)
    if design in ("in-context", "cross-attention"):
        return vit_block_forward(P, pre, x, cond, num_heads)
    raise ValueError(f"unknown block design {design!r}: choose one of {BLOCK_DESIGNS}")


def block_backward(design, dout, cache):
    if design in ("adaLN-Zero", "adaLN"):
        return adaln_block_backward(dout, cache)
    return vit_block_backward(dout, cache)


def final_layer_forward(P, x, c, adaptive):
    """Decoder of paper section 3.2: LN(x) (modulated by c when adaptive) -> Linear(D -> p*p*C_out).

    x (N, T, D), c (N, D) -> (N, T, p*p*C_out). The unpatchify that follows lives in the model.
    """
    xp = get_array_module(x)
    h, c_ln = layernorm_forward(x, eps=LN_EPS)
    c_silu = c_mod = c_m = None
    if adaptive:
        sc, c_silu = silu_forward(c)
        mod, c_mod = linear_forward(sc, P["final_layer.adaLN_modulation.1.w"],
                                    P["final_layer.adaLN_modulation.1.b"])
        shift, scale = xp.split(mod, 2, axis=1)  # chunk order [shift, scale] (PAPER.md 1.6)
        h, c_m = modulate_forward(h, shift, scale)
    out, c_lin = linear_forward(h, P["final_layer.linear.w"], P["final_layer.linear.b"])
    return out, (c_ln, c_silu, c_mod, c_m, c_lin)


def final_layer_backward(dout, cache):
    """dout (N, T, p*p*C_out) -> dx (N, T, D), dc (N, D) or None, grads."""
    c_ln, c_silu, c_mod, c_m, c_lin = cache
    xp = get_array_module(dout)
    g = {}
    # out = h @ W + b
    dh, g["final_layer.linear.w"], g["final_layer.linear.b"] = linear_backward(dout, c_lin)
    dc = None
    if c_m is not None:
        # h = modulate(LN(x), shift, scale), [shift, scale] = silu(c) @ W_ada + b_ada
        dh, dshift, dscale = modulate_backward(dh, c_m)
        dsc, g["final_layer.adaLN_modulation.1.w"], g["final_layer.adaLN_modulation.1.b"] = \
            linear_backward(xp.concatenate([dshift, dscale], axis=1), c_mod)
        dc = silu_backward(dsc, c_silu)
    # h = LN(x)
    return layernorm_backward(dh, c_ln)[0], dc, g
