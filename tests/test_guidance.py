"""Classifier-free guidance (minidit.guidance): scale 1 is the conditional model, the guided noise
is eps_u + s (eps_c - eps_u) on all channels or, as the official code, on channels 0-2 only; host
labels work with device weights; a scale below 1 (or not finite) is refused."""
import numpy as np
import pytest

from minidit.backend import to_numpy
from minidit.guidance import forward_with_cfg, make_model_fn
from minidit.model import dit_forward
from conftest import dit_inputs as _inputs, randomised_params, tiny_dit as tiny


def test_guidance(xp):
    cfg = tiny(in_channels=4)
    P = randomised_params(xp, cfg)
    x, t, _ = _inputs(xp, cfg)
    y = xp.asarray([1, 3])
    cond = to_numpy(dit_forward(P, x, t, y, cfg)[0])
    uncond = to_numpy(dit_forward(P, x, t, xp.full_like(y, 5), cfg)[0])
    # scale 1 gives the conditional prediction exactly
    np.testing.assert_allclose(to_numpy(make_model_fn(P, cfg, y, 1.0)(x, t)), cond, rtol=1e-12)
    xx, tt, yy = xp.concatenate([x, x]), xp.concatenate([t, t]), xp.concatenate([y, xp.full_like(y, 5)])
    s = 4.0
    allg = to_numpy(forward_with_cfg(P, xx, tt, yy, s, cfg, guidance="all"))
    guided = uncond[:, :4] + s * (cond[:, :4] - uncond[:, :4])
    np.testing.assert_allclose(allg[:2, :4], guided, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(allg[2:, :4], guided, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(allg[:2, 4:], cond[:, 4:], rtol=1e-12)  # variance channels unguided
    off = to_numpy(forward_with_cfg(P, xx, tt, yy, s, cfg, guidance="official"))
    np.testing.assert_allclose(off[:2, :3], guided[:, :3], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(off[:2, 3:], cond[:, 3:], rtol=1e-12)  # channel 3 passes through
    np.testing.assert_allclose(off[2:, 3:], uncond[:, 3:], rtol=1e-12)
    np.testing.assert_allclose(to_numpy(make_model_fn(P, cfg, y, s)(x, t)), allg[:2], rtol=1e-12)


@pytest.mark.parametrize("scale", [0.5, float("nan"), float("inf")])
def test_bad_guidance_scales_are_refused(scale):
    cfg = tiny()
    with pytest.raises(ValueError, match="guidance scale must be >= 1"):
        make_model_fn({}, cfg, np.array([0]), scale)


def test_host_labels_with_device_arrays(xp):
    """The labels of a sampling run may be a host array while x lives on the device."""
    cfg = tiny()
    P = randomised_params(xp, cfg)
    x, t, _ = _inputs(xp, cfg)
    y_host = np.array([1, 3])
    got = to_numpy(make_model_fn(P, cfg, y_host, 3.0)(x, t))
    want = to_numpy(make_model_fn(P, cfg, xp.asarray(y_host), 3.0)(x, t))
    np.testing.assert_array_equal(got, want)
