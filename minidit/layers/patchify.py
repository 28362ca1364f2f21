"""Patchify and unpatchify (paper section 3.2 "Patchify", docs/paper.md §1.1 and §1.6).

The patch embedding is a linear map of each non-overlapping p x p patch, which equals the
official Conv2d with kernel = stride = p. A patch is flattened in (channel, row, col) order, "CHW",
matching the conv weight (D, C, p, p) viewed as (D, C*p*p); tokens run row-major over the
patch grid. The decoder's output tokens are read the other way, (row, col, channel), "HWC",
channel fastest (docs/paper.md §1.6, pitfall 5.5), so there are two inverses with different layouts:
unpatchify_chw undoes patchify, unpatchify_hwc_forward is the official `unpatchify` of the model.
"""
from .linear import linear_forward, linear_backward


def patchify(x, p):
    """x (N, C, H, W) -> patches (N, T, C*p*p), each flattened CHW; T = (H/p)(W/p), token =
    grid_row * Gw + grid_col."""
    N, C, H, W = x.shape
    if H % p or W % p:
        raise ValueError(f"patchify: image {H}x{W} is not divisible by patch size {p}")
    Gh, Gw = H // p, W // p
    x = x.reshape(N, C, Gh, p, Gw, p).transpose(0, 2, 4, 1, 3, 5)  # (N, Gh, Gw, C, p, p)
    return x.reshape(N, Gh * Gw, C * p * p)


def unpatchify_chw(patches, p, C, H, W):
    """Inverse of `patchify`: patches (N, T, C*p*p), each flattened CHW -> (N, C, H, W)."""
    N = patches.shape[0]
    Gh, Gw = H // p, W // p
    x = patches.reshape(N, Gh, Gw, C, p, p).transpose(0, 3, 1, 4, 2, 5)  # (N, C, Gh, p, Gw, p)
    return x.reshape(N, C, H, W)


def patch_embed_forward(x, w, b, p):
    """x (N, C, H, W), w (C*p*p, D), b (D,) -> tokens (N, T, D)."""
    N, C, H, W = x.shape
    if w.shape[0] != C * p * p:
        raise ValueError(f"patch embed: weight has {w.shape[0]} inputs, expected C*p*p = {C * p * p}")
    tokens, c_lin = linear_forward(patchify(x, p), w, b)
    return tokens, (c_lin, p, x.shape)


# exercise: 3.2 Patchify
def patch_embed_backward(dout, cache, need_dx=True):
    """dout (N, T, D) -> dx (N, C, H, W) (None if not need_dx), dw (C*p*p, D), db (D,)."""
    c_lin, p, (N, C, H, W) = cache
    # tokens = patchify(x) @ w + b
    dpatches, dw, db = linear_backward(dout, c_lin, need_dx)
    if not need_dx:
        return None, dw, db
    # patches = patchify(x), a pure re-indexing, so its backward is the inverse re-indexing
    return unpatchify_chw(dpatches, p, C, H, W), dw, db


def unpatchify_hwc_forward(tokens, p, C_out, H, W):
    """The model's unpatchify: tokens (N, T, p*p*C_out), each read HWC -> image (N, C_out, H, W),
    out[c, i p + a, j p + b] = tok[i Gw + j][(a p + b) C_out + c]."""
    N, T, F = tokens.shape
    Gh, Gw = H // p, W // p
    if T != Gh * Gw or F != p * p * C_out:
        raise ValueError(f"unpatchify: tokens {tokens.shape} do not fit a {H}x{W} image with "
                         f"patch {p} and {C_out} channels")
    x = tokens.reshape(N, Gh, Gw, p, p, C_out).transpose(0, 5, 1, 3, 2, 4)  # (N, C, Gh, p, Gw, p)
    return x.reshape(N, C_out, H, W), (p, C_out, Gh, Gw)


# exercise: 3.2 Transformer decoder
def unpatchify_hwc_backward(dout, cache):
    """dout (N, C_out, H, W) -> dtokens (N, T, p*p*C_out)."""
    p, C_out, Gh, Gw = cache
    N = dout.shape[0]
    # out = tokens.reshape(N, Gh, Gw, p, p, C).transpose(0, 5, 1, 3, 2, 4): undo the permutation
    d = dout.reshape(N, C_out, Gh, p, Gw, p).transpose(0, 2, 4, 3, 5, 1)  # (N, Gh, Gw, p, p, C)
    return d.reshape(N, Gh * Gw, p * p * C_out)
