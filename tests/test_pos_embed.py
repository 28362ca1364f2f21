"""The fixed 2-D sin-cos position embedding, checked against entries derived by hand on a
NON-square grid (docs/paper.md §1.2 and pitfall 5.1: the first half encodes the column)."""
import math

import numpy as np
import pytest

from minidit.layers.pos_embed import get_1d_sincos_pos_embed, get_2d_sincos_pos_embed


def test_hand_derived_entries():
    # D = 8: four blocks of width 2, w = [10000^0, 10000^(-1/2)] = [1, 0.01]; grid 2 rows x 3 cols
    emb = get_2d_sincos_pos_embed(8, 2, 3)
    assert emb.shape == (6, 8) and emb.dtype == np.float64
    r, c = 1, 2
    tok = emb[r * 3 + c]  # row-major token index
    expected = [math.sin(c * 1), math.sin(c * 0.01), math.cos(c * 1), math.cos(c * 0.01),
                math.sin(r * 1), math.sin(r * 0.01), math.cos(r * 1), math.cos(r * 0.01)]
    np.testing.assert_allclose(tok, expected, rtol=0, atol=1e-15)
    # token 0 (row 0, col 0): sin parts 0, cos parts 1
    np.testing.assert_array_equal(emb[0], [0, 0, 1, 1, 0, 0, 1, 1])
    # moving along a row changes only the first half; moving down a column only the second
    np.testing.assert_array_equal(emb[1][4:], emb[0][4:])
    np.testing.assert_array_equal(emb[3][:4], emb[0][:4])


def test_1d_frequencies():
    e = get_1d_sincos_pos_embed(6, [3.0])  # w_k = 10000^(-k/3)
    w = [1.0, 10000 ** (-1 / 3), 10000 ** (-2 / 3)]
    np.testing.assert_allclose(e[0], [math.sin(3 * v) for v in w] + [math.cos(3 * v) for v in w], atol=1e-15)


def test_dit_s2_table_shape_and_range():
    emb = get_2d_sincos_pos_embed(384, 16)  # DiT-S/2 at 256 px: T = 256 tokens, D = 384
    assert emb.shape == (256, 384)
    assert np.abs(emb).max() <= 1.0


def test_rejects_width_not_divisible_by_4():
    with pytest.raises(ValueError, match="divisible by 4"):
        get_2d_sincos_pos_embed(6, 2)
