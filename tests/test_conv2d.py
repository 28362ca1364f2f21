"""conv2d: forward against a direct loop over output pixels, gradient checks (1e-7) for several
strides, paddings and kernel shapes on a non-square batch with several channels in and out."""
import numpy as np
import pytest

from conftest import gradcheck, randn
from minidit.backend import to_numpy
from minidit.layers.conv2d import conv2d_backward, conv2d_forward, conv2d_output_size

# (kernel (kh, kw), stride, pad) on a 7 x 5 input: odd sides, so stride 2 and 3 drop pixels
CASES = [((3, 3), 1, 1), ((3, 3), 2, 1), ((3, 3), 2, 0), ((1, 1), 1, 0), ((2, 3), 3, 2), ((3, 3), 1, 2)]


def conv2d_reference(x, w, b, stride, pad):
    """The definition, one output pixel at a time (a test may loop; the library may not)."""
    N, C, H, W = x.shape
    Co, _, kh, kw = w.shape
    xp_ = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    Ho, Wo = conv2d_output_size(H, kh, stride, pad), conv2d_output_size(W, kw, stride, pad)
    out = np.zeros((N, Co, Ho, Wo))
    for i in range(Ho):
        for j in range(Wo):
            window = xp_[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw]  # (N, C, kh, kw)
            out[:, :, i, j] = np.einsum("nckl,ockl->no", window, w)
    return out if b is None else out + b[None, :, None, None]


@pytest.mark.parametrize("kernel,stride,pad", CASES)
def test_conv2d_forward_matches_loop(xp, rng, kernel, stride, pad):
    x, w, b = randn(xp, rng, 2, 3, 7, 5), randn(xp, rng, 4, 3, *kernel), randn(xp, rng, 4)
    out, _ = conv2d_forward(x, w, b, stride, pad)
    ref = conv2d_reference(to_numpy(x), to_numpy(w), to_numpy(b), stride, pad)
    assert out.shape == ref.shape
    np.testing.assert_allclose(to_numpy(out), ref, rtol=1e-12, atol=1e-12)
    out, _ = conv2d_forward(x, w, None, stride, pad)
    np.testing.assert_allclose(to_numpy(out), ref - to_numpy(b)[None, :, None, None], atol=1e-12)


@pytest.mark.parametrize("kernel,stride,pad", CASES)
def test_conv2d_gradcheck(xp, rng, kernel, stride, pad):
    arrays = dict(x=randn(xp, rng, 2, 3, 7, 5), w=randn(xp, rng, 4, 3, *kernel), b=randn(xp, rng, 4))
    f = lambda x, w, b: conv2d_forward(x, w, b, stride, pad)
    gradcheck(f"conv2d {kernel[0]}x{kernel[1]} stride {stride} pad {pad} (2x3x7x5 -> 4 ch)", f,
              conv2d_backward, arrays, tol=1e-7)


def test_conv2d_without_bias_and_without_dx(xp, rng):
    x, w = randn(xp, rng, 2, 3, 6, 4), randn(xp, rng, 5, 3, 3, 3)
    out, cache = conv2d_forward(x, w, None, 2, 1)
    dout = randn(xp, rng, *out.shape)
    dx, dw, db = conv2d_backward(dout, cache)
    assert db is None and dx.shape == x.shape and dw.shape == w.shape
    dx2, dw2, _ = conv2d_backward(dout, cache, need_dx=False)
    assert dx2 is None and np.array_equal(to_numpy(dw), to_numpy(dw2))


def test_conv2d_shape_errors(xp, rng):
    with pytest.raises(ValueError, match="channels"):
        conv2d_forward(randn(xp, rng, 1, 2, 4, 4), randn(xp, rng, 3, 5, 3, 3))
    with pytest.raises(ValueError, match="does not fit"):
        conv2d_forward(randn(xp, rng, 1, 2, 2, 2), randn(xp, rng, 3, 2, 3, 3))
