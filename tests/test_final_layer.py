"""The final layer (LayerNorm, adaptive or plain, then the linear decoder): float64 gradient checks
of x, c and every parameter with random weights (the zero-initialised ones too); tolerance 1e-7."""
import pytest

from conftest import gradcheck, randn
from minidit.layers import final_layer_backward, final_layer_forward

N, T, D, F = 2, 5, 8, 12


@pytest.mark.parametrize("adaptive", [True, False])
def test_final_layer_gradcheck(xp, rng, adaptive):
    P = dict(w=randn(xp, rng, D, F), b=randn(xp, rng, F))
    if adaptive:
        P.update(ada_w=randn(xp, rng, D, 2 * D, scale=0.4), ada_b=randn(xp, rng, 2 * D, scale=0.4))
    arrays = dict(x=randn(xp, rng, N, T, D), c=randn(xp, rng, N, D), **P)

    def f(x, c, **params):
        return final_layer_forward(x, c, **params)

    def b(dout, cache):
        dx, dc, dw, db, dada_w, dada_b = final_layer_backward(dout, cache)
        return dict(x=dx, c=dc, w=dw, b=db, ada_w=dada_w, ada_b=dada_b)

    wrt = None if adaptive else [k for k in arrays if k != "c"]  # a plain final layer ignores c
    gradcheck(f"final layer ({'adaptive' if adaptive else 'plain'})", f, b, arrays, tol=1e-7, wrt=wrt)


def test_plain_final_layer_ignores_c(xp, rng):
    x, w, b = randn(xp, rng, N, T, D), randn(xp, rng, D, F), randn(xp, rng, F)
    out1, cache = final_layer_forward(x, randn(xp, rng, N, D), w, b)
    out2, _ = final_layer_forward(x, randn(xp, rng, N, D), w, b)
    assert (out1 == out2).all()
    assert final_layer_backward(out1, cache)[1] is None  # no gradient for c
