"""The fixed 2-D sine-cosine position embedding added to the patch tokens (from MAE;
paper section 3.2 "Patchify", docs/paper.md §1.2). It is computed once in float64 and never trained.

Layout per token (row r, column c of the patch grid), four blocks of width D/4:
    [sin(c w), cos(c w), sin(r w), cos(r w)],   w_k = 10000^(-k / (D/4)), k = 0 .. D/4 - 1.
The first half encodes the COLUMN index: the official grid comes from meshgrid(w, h).
"""
import numpy as np


def get_1d_sincos_pos_embed(dim, positions):
    """positions (M,) -> (M, dim) float64, [sin(m w), cos(m w)] with w_k = 10000^(-k/(dim/2))."""
    if dim % 2:
        raise ValueError(f"1-D sin-cos embedding needs an even width, got {dim}")
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))  # (dim/2,)
    angles = np.asarray(positions, dtype=np.float64).reshape(-1)[:, None] * omega[None, :]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


# exercise: 3.2 Patchify
def get_2d_sincos_pos_embed(dim, grid_h, grid_w=None):
    """(grid_h * grid_w, dim) float64 table; token index = row * grid_w + col (host NumPy).

    grid_w defaults to grid_h (a square grid). Token (row r, column c) gets the four blocks of
    width dim/4 of the layout above: [sin(c w), cos(c w), sin(r w), cos(r w)], with
    w_k = 10000^(-k / (dim/4)); the first half is get_1d_sincos_pos_embed(dim // 2, columns), the
    second half the same of the rows. A dim not divisible by 4 raises a ValueError whose message
    contains "divisible by 4".

    Built once per model (the caller casts it to float32 and moves it to the device), so no
    training step recomputes it.
    """
    grid_w = grid_h if grid_w is None else grid_w
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs a width divisible by 4, got {dim}")
    rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")  # (Gh, Gw)
    emb_col = get_1d_sincos_pos_embed(dim // 2, cols.reshape(-1))  # first half: column index
    emb_row = get_1d_sincos_pos_embed(dim // 2, rows.reshape(-1))  # second half: row index
    return np.concatenate([emb_col, emb_row], axis=1)
