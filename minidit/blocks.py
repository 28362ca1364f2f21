"""The DiT block designs of paper section 3.2 (docs/paper.md §1.5 and §1.10) and their registry.

A design is one `BlockDesign` record in `BLOCK_DESIGNS`: its forward and backward, the shapes of
its parameters, which of them the paper initialises to zero, its multiply-adds, and how it lets
the blocks see the timestep and label embeddings (its conditioning):
  - adaLN-Zero, adaLN: cond = c = t_emb + y_emb, (N, D), regressed into shifts, scales (and gates);
  - cross-attention:   cond = [t_emb, y_emb], (N, 2, D), read by a cross-attention layer;
  - in-context:        t_emb and y_emb travel as two extra tokens of x; cond is None.
The model, the initialisation, the Gflops count and the experiments read these records and
nothing else, so a new design is one more `register_design(...)` call (docs/design.md, "Adding a
block design"). Backward functions return (dx, dcond, grads), grads keyed like the parameters.
The four designs stay in this one module of a few more than 300 lines, so that adding a design
touches one file.
"""
import contextlib
from dataclasses import dataclass
from functools import partial
from typing import Callable

from .backend import get_array_module
from .layers import (attention_backward, attention_forward, cross_attention_backward,
                     cross_attention_forward, gated_residual_backward, gated_residual_forward,
                     layernorm_backward, layernorm_forward, linear_backward, linear_forward,
                     mlp_backward, mlp_forward, modulate_backward, modulate_forward,
                     silu_backward, silu_forward)

LN_EPS = 1e-6  # every LayerNorm of DiT (docs/paper.md §1.5)


@dataclass(frozen=True)
class BlockDesign:
    """One way of conditioning a transformer block on t and y (paper section 3.2, Figure 3).

    forward(P, pre, x, cond, num_heads) -> out, cache, where P holds the parameters under the
        block's prefix `pre` ("blocks.3."); x (N, T', D) with T' = T + extra_tokens.
    backward(dout, cache) -> dx, dcond (None when cond is None), grads keyed like P.
    param_shapes(D, mlp_hidden) -> {key after the prefix: shape}, in initialisation order.
    zero_init: keys (after the prefix) the paper initialises to zero.
    macs(T, D, mlp_hidden) -> multiply-adds of one block for one image of T image tokens.
    condition(h, t_emb, y_emb) -> (h', cond): the token sequence and conditioning the blocks see.
    condition_backward(dh', dcond) -> (dh, dt_emb, dy_emb): the gradient of `condition`.
    extra_tokens: tokens `condition` appends to h; they are dropped before the final layer.
    adaptive_final: whether the final layer is modulated by c = t_emb + y_emb (docs/paper.md §1.6).
    """
    name: str
    forward: Callable
    backward: Callable
    param_shapes: Callable
    zero_init: tuple
    macs: Callable
    condition: Callable
    condition_backward: Callable
    extra_tokens: int = 0
    adaptive_final: bool = True


BLOCK_DESIGNS = {}  # name -> BlockDesign, in the order of the paper's Table 4


def register_design(design):
    """Add a design to the registry (DiTConfig(block=design.name) then builds it); returns it."""
    if design.name in BLOCK_DESIGNS:
        raise ValueError(f"a block design called {design.name!r} is already registered")
    BLOCK_DESIGNS[design.name] = design
    return design


@contextlib.contextmanager
def registered(design):
    """Register a design for the duration of a `with` block (tests and notebooks)."""
    register_design(design)
    try:
        yield design
    finally:
        del BLOCK_DESIGNS[design.name]


def get_design(name):
    """The registered design called `name`; a clear error names the known ones."""
    if name not in BLOCK_DESIGNS:
        raise ValueError(f"unknown block design {name!r}: choose one of {tuple(BLOCK_DESIGNS)}")
    return BLOCK_DESIGNS[name]


def block_forward(design, P, pre, x, cond, num_heads):
    """One block of the named design: get_design(design).forward(...)."""
    return get_design(design).forward(P, pre, x, cond, num_heads)


def block_backward(design, dout, cache):
    """The backward of one block of the named design: (dx, dcond, grads)."""
    return get_design(design).backward(dout, cache)


# Shared pieces ---------------------------------------------------------------------------------

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


def _linear_shapes(name, din, dout):
    return {name + ".w": (din, dout), name + ".b": (dout,)}


def _transformer_shapes(D, H, norms=False, cross=False):
    """attn, mlp and (for the ViT blocks) the affine LayerNorms norm1..3, in forward order."""
    s = {}
    ln = lambda name: {name + ".w": (D,), name + ".b": (D,)}  # noqa: E731  gamma, beta
    s.update(ln("norm1") if norms else {})
    s.update(_linear_shapes("attn.qkv", D, 3 * D), **_linear_shapes("attn.proj", D, D))
    s.update(ln("norm2") if norms else {})
    if cross:
        for n in ("q", "k", "v", "proj"):
            s.update(_linear_shapes("cross_attn." + n, D, D))
        s.update(ln("norm3"))
    s.update(_linear_shapes("mlp.fc1", D, H), **_linear_shapes("mlp.fc2", H, D))
    return s


def _transformer_macs(T, D, H):
    """qkv and output projections, q k^T and p v, fc1 and fc2 for T tokens."""
    return T * D * 3 * D + T * D * D + 2 * T * T * D + 2 * T * D * H


# adaLN-Zero and adaLN -------------------------------------------------------------------------

# exercise: 3.2 DiT block design
def adaln_block_forward(P, pre, x, c, num_heads, gated=True):
    """adaLN-Zero (gated=True) or adaLN (gated=False) block. x (N, T, D), c (N, D) -> (N, T, D).

    adaLN-Zero:  x = x + gate_msa * attn(modulate(LN(x), shift_msa, scale_msa))
                 x = x + gate_mlp * mlp(modulate(LN(x), shift_mlp, scale_mlp))
    adaLN drops the two gates (plain residuals) and regresses 4 vectors instead of 6.
    The modulation is silu(c) @ W + b with W = P[pre + "adaLN_modulation.1.w"], split into
    (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp) (adaLN: no gates); LN is
    layernorm_forward(., eps=LN_EPS) without affine; attn and mlp are the block's attention_forward
    and mlp_forward with P[pre + "attn.qkv.w"], ... (the helpers _attn and _mlp).
    Returns out and cache = (pre, gated, c_silu, c_mod, c_ln1, c_m1, c_attn, c_r1, c_ln2, c_m2,
    c_mlp, c_r2): the caches of the calls in forward order (c_r1 and c_r2 are None for adaLN).
    """
    xp = get_array_module(x)
    sc, c_silu = silu_forward(c)  # each block applies its own SiLU to c
    mod, c_mod = linear_forward(sc, P[pre + "adaLN_modulation.1.w"], P[pre + "adaLN_modulation.1.b"])
    if gated:  # chunk order of docs/paper.md §1.5
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


# exercise: 3.2 DiT block design
def adaln_block_backward(dout, cache):
    """dout (N, T, D) -> dx (N, T, D), dc (N, D), grads (a dict keyed like the block's
    parameters, with the prefix: pre + "attn.qkv.w", ..., pre + "adaLN_modulation.1.b")."""
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


def sum_condition(h, t_emb, y_emb):
    """c = t_emb + y_emb (N, D): a sum, not a concatenation (docs/paper.md §1.4)."""
    return h, t_emb + y_emb


def sum_condition_backward(dh, dc):
    # c = t_emb + y_emb
    return dh, dc, dc


# in-context and cross-attention: standard ViT blocks --------------------------------------------

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


def token_condition(h, t_emb, y_emb):
    """In-context: the two embeddings become tokens T and T + 1 of the sequence, (N, T + 2, D)."""
    xp = get_array_module(h)
    return xp.concatenate([h, t_emb[:, None], y_emb[:, None]], axis=1), None


def token_condition_backward(dh, dcond):
    # h' = concat([h, t_emb, y_emb], tokens)
    return dh[:, :-2], dh[:, -2], dh[:, -1]


def sequence_condition(h, t_emb, y_emb):
    """Cross-attention: the embeddings form a separate sequence of length 2, (N, 2, D)."""
    return h, get_array_module(h).stack([t_emb, y_emb], axis=1)


def sequence_condition_backward(dh, dcond):
    # cond = stack([t_emb, y_emb], axis=1)
    return dh, dcond[:, 0], dcond[:, 1]


def _cross_attention_macs(T, D, H, S=2):
    """The self-attention block plus a cross-attention layer against the S = 2 context tokens."""
    return _transformer_macs(T, D, H) + 2 * T * D * D + 2 * S * D * D + 2 * T * S * D


# The registry: the four designs of Table 4 ------------------------------------------------------

_ADALN_ZERO_KEYS = ("adaLN_modulation.1.w", "adaLN_modulation.1.b")

register_design(BlockDesign(
    "in-context", vit_block_forward, vit_block_backward,
    param_shapes=partial(_transformer_shapes, norms=True), zero_init=(),
    macs=lambda T, D, H: _transformer_macs(T + 2, D, H),  # the blocks see two more tokens
    condition=token_condition, condition_backward=token_condition_backward,
    extra_tokens=2, adaptive_final=False))
register_design(BlockDesign(
    "cross-attention", vit_block_forward, vit_block_backward,
    param_shapes=partial(_transformer_shapes, norms=True, cross=True), zero_init=(),
    macs=_cross_attention_macs,
    condition=sequence_condition, condition_backward=sequence_condition_backward,
    adaptive_final=False))
register_design(BlockDesign(
    "adaLN", partial(adaln_block_forward, gated=False), adaln_block_backward,
    param_shapes=lambda D, H: {**_transformer_shapes(D, H), **_linear_shapes("adaLN_modulation.1", D, 4 * D)},
    zero_init=(),  # adaLN keeps the standard (xavier) initialisation
    macs=lambda T, D, H: _transformer_macs(T, D, H) + 4 * D * D,
    condition=sum_condition, condition_backward=sum_condition_backward))
register_design(BlockDesign(
    "adaLN-Zero", partial(adaln_block_forward, gated=True), adaln_block_backward,
    param_shapes=lambda D, H: {**_transformer_shapes(D, H), **_linear_shapes("adaLN_modulation.1", D, 6 * D)},
    zero_init=_ADALN_ZERO_KEYS,  # every block starts as the identity
    macs=lambda T, D, H: _transformer_macs(T, D, H) + 6 * D * D,
    condition=sum_condition, condition_backward=sum_condition_backward))

