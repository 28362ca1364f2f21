"""2-D convolution, the building block of the autoencoder of latent diffusion (paper section
3.1, docs/paper.md §4.2: the Stable Diffusion VAE is a convolutional network).

The convolution is written as one batched matrix product over an im2col view: a strided view
lays every k x k window of the padded input out as a column (no copy until the matmul needs
one), and the kernel, viewed as a (C_out, C_in*k*k) matrix, multiplies all columns at once.
The weight keeps PyTorch's layout (C_out, C_in, kh, kw), so SD-VAE weights load unchanged.
"""
from typing import NamedTuple

from ..backend import get_array_module


class Conv2dCache(NamedTuple):
    """The im2col matrix (N, C_in*kh*kw, Ho*Wo) the weight gradient needs, the weight, whether b
    was given, the stride, the padding and the input's shape."""
    cols: object
    w: object
    has_bias: bool
    stride: int
    pad: int
    x_shape: tuple


def _windows(xpad, kh, kw, stride, Ho, Wo):
    """A strided view (N, C, kh, kw, Ho, Wo) of xpad: [n, c, a, b, i, j] = xpad[n, c, i s + a, j s + b]."""
    xp = get_array_module(xpad)
    sN, sC, sH, sW = xpad.strides
    N, C = xpad.shape[:2]
    return xp.lib.stride_tricks.as_strided(
        xpad, shape=(N, C, kh, kw, Ho, Wo), strides=(sN, sC, sH, sW, sH * stride, sW * stride))


def conv2d_output_size(size, k, stride, pad):
    """Output side of a convolution, floor((size + 2 pad - k) / stride) + 1, as torch.nn.Conv2d."""
    return (size + 2 * pad - k) // stride + 1


def conv2d_forward(x, w, b=None, stride=1, pad=0):
    """x (N, C_in, H, W), w (C_out, C_in, kh, kw), b (C_out,) or None -> out (N, C_out, Ho, Wo).

    Zero padding `pad` on every side; Ho = floor((H + 2 pad - kh) / stride) + 1. The cache keeps
    the im2col matrix (N, C_in*kh*kw, Ho*Wo), which the weight gradient needs.
    """
    xp = get_array_module(x)
    N, C, H, W = x.shape
    Co, Ci, kh, kw = w.shape
    if Ci != C:
        raise ValueError(f"conv2d: input has {C} channels, the kernel expects {Ci}")
    Ho, Wo = conv2d_output_size(H, kh, stride, pad), conv2d_output_size(W, kw, stride, pad)
    if Ho < 1 or Wo < 1:
        raise ValueError(f"conv2d: a {kh}x{kw} kernel does not fit a {H}x{W} input padded by {pad}")
    xpad = xp.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))) if pad else x
    cols = _windows(xpad, kh, kw, stride, Ho, Wo).reshape(N, C * kh * kw, Ho * Wo)  # im2col, (N, K, L)
    out = xp.matmul(w.reshape(Co, C * kh * kw), cols)  # (C_out, K) @ (N, K, L) -> (N, C_out, L)
    if b is not None:
        out += b[:, None]
    return out.reshape(N, Co, Ho, Wo), Conv2dCache(cols, w, b is not None, stride, pad, tuple(x.shape))


def conv2d_backward(dout, cache, need_dx=True):
    """dout (N, C_out, Ho, Wo) -> dx (N, C_in, H, W) (None if not need_dx), dw like w, db (C_out,) or None."""
    cols, w, has_b, stride, pad, (N, C, H, W) = cache
    xp = get_array_module(dout)
    Co, _, kh, kw = w.shape
    Ho, Wo = dout.shape[2:]
    d2 = dout.reshape(N, Co, Ho * Wo)  # (N, C_out, L)
    # out += b[:, None]
    db = dout.sum(axis=(0, 2, 3)) if has_b else None
    # out[n] = w2 @ cols[n] for every n  =>  dw2 = sum_n dout[n] @ cols[n]^T
    dw = xp.matmul(d2, cols.transpose(0, 2, 1)).sum(axis=0).reshape(w.shape)  # (C_out, K)
    if not need_dx:
        return None, dw, db
    # out = w2 @ cols  =>  dcols = w2^T @ dout
    dcols = xp.matmul(w.reshape(Co, -1).T, d2).reshape(N, C, kh, kw, Ho, Wo)
    # cols = windows(xpad): col2im, each pixel collects the gradient of every window that saw
    # it. One strided slice per kernel offset (a, b), so the loop is over kh*kw offsets only.
    dxpad = xp.zeros((N, C, H + 2 * pad, W + 2 * pad), dtype=dout.dtype)
    for a in range(kh):
        for b in range(kw):
            dxpad[:, :, a:a + stride * Ho:stride, b:b + stride * Wo:stride] += dcols[:, :, a, b]
    # xpad = pad(x)
    dx = dxpad[:, :, pad:pad + H, pad:pad + W] if pad else dxpad
    return xp.ascontiguousarray(dx), dw, db


def conv2d_infer(x, w, b=None, stride=1, pad=0, band_bytes=32 << 20):
    """The forward of conv2d_forward without its cache, for inference (the SD VAE at 256 px).

    The im2col matrix of a whole 256x256 image with 256 channels is 0.6 GB, and only the backward
    needs it. Here it is built for one band of output rows at a time (at most `band_bytes`), so
    each band is still one matrix product but the memory is the output plus one small band.
    pad: an int (every side) or (top, bottom, left, right), as torch.nn.functional.pad's
    (left, right, top, bottom) reordered; the SD VAE's downsampling pads (0, 1, 0, 1).
    """
    xp = get_array_module(x)
    N, C, H, W = x.shape
    Co, Ci, kh, kw = w.shape
    if Ci != C:
        raise ValueError(f"conv2d: input has {C} channels, the kernel expects {Ci}")
    top, bottom, left, right = (pad,) * 4 if isinstance(pad, int) else pad
    Ho, Wo = (H + top + bottom - kh) // stride + 1, (W + left + right - kw) // stride + 1
    if Ho < 1 or Wo < 1:
        raise ValueError(f"conv2d: a {kh}x{kw} kernel does not fit a {H}x{W} input padded by {pad}")
    if top or bottom or left or right:
        x = xp.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    w2 = w.reshape(Co, C * kh * kw)
    out = xp.empty((N, Co, Ho, Wo), dtype=x.dtype)
    rows = max(1, min(Ho, band_bytes // max(1, C * kh * kw * Wo * x.dtype.itemsize)))
    for n in range(N):
        for r in range(0, Ho, rows):
            r1 = min(Ho, r + rows)
            piece = x[n:n + 1, :, r * stride:(r1 - 1) * stride + kh]  # the input rows this band reads
            cols = _windows(piece, kh, kw, stride, r1 - r, Wo).reshape(C * kh * kw, (r1 - r) * Wo)
            band = xp.matmul(w2, cols)  # (C_out, K) @ (K, rows * Wo)
            if b is not None:
                band += b[:, None]
            out[n, :, r:r1] = band.reshape(Co, r1 - r, Wo)
    return out
