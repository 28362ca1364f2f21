"""Label embedding with a null class: lookup, a gradient check with repeated labels (the
one-hot product must sum repeats), label dropout, and class-id errors."""
import numpy as np
import pytest

from conftest import gradcheck, randn
from minidit.backend import Generator, device_of, to_numpy
from minidit.layers.label_embed import label_embed_forward, label_embed_backward, drop_labels

K, D = 4, 3  # 4 classes + the null row


def test_lookup(xp, rng):
    table = randn(xp, rng, K + 1, D)
    out, _ = label_embed_forward(xp.asarray([2, 4, 2]), table)
    np.testing.assert_array_equal(to_numpy(out), to_numpy(table)[[2, 4, 2]])


def test_label_embed_gradcheck_with_repeats(xp, rng):
    y = xp.asarray([1, 3, 1, 4, 1])
    f = lambda table: label_embed_forward(y, table)
    gradcheck("label embedding (one-hot backward)", f, lambda d, c: (label_embed_backward(d, c),),
              dict(table=randn(xp, rng, K + 1, D)), tol=1e-7)


def test_class_id_errors(xp, rng):
    """Labels given on the host are checked against the table, whichever device it is on;
    labels already on the device are not read (that would be a sync on every forward)."""
    table = randn(xp, rng, K + 1, D)
    with pytest.raises(ValueError, match="class id 5"):
        label_embed_forward(np.array([0, 5]), table)
    with pytest.raises(ValueError, match="class id -1"):
        label_embed_forward(np.array([-1]), table)
    out, _ = label_embed_forward(np.array([4, 0]), table)  # host labels, device table: moved
    np.testing.assert_array_equal(to_numpy(out), to_numpy(table)[[4, 0]])


def test_drop_labels(xp):
    y = xp.asarray(np.arange(2000) % K)
    dev = device_of(y)
    forced = drop_labels(y[:4], 0.1, K, force_drop_ids=xp.asarray([1, 0, 0, 1]))
    np.testing.assert_array_equal(to_numpy(forced), [K, 1, 2, K])
    dropped = to_numpy(drop_labels(y, 0.1, K, rng=Generator(0, device=dev)))
    frac = (dropped == K).mean()
    assert 0.08 < frac < 0.12  # about 10% replaced by the null class
    kept = dropped != K
    np.testing.assert_array_equal(dropped[kept], to_numpy(y)[kept])
    again = to_numpy(drop_labels(y, 0.1, K, rng=Generator(0, device=dev)))
    np.testing.assert_array_equal(dropped, again)  # same seed, same drops
    np.testing.assert_array_equal(to_numpy(drop_labels(y, 0.0, K)), to_numpy(y))
