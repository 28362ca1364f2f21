"""Label embedder with a learned null class (paper section 3.1 classifier-free guidance,
docs/paper.md §1.4). The table has K + 1 rows when label dropout is used; row K is the "null"
(unconditional) embedding. Dropout is a separate, explicit step so the forward stays
deterministic.
"""
import numpy as np

from ..backend import device_of, get_array_module


def drop_labels(y, prob, num_classes, rng=None, force_drop_ids=None):
    """Replace each label by the null class K with probability `prob` (training-time dropout).

    y (N,) int; rng a minidit.backend.Generator; force_drop_ids (N,) with 1 = drop overrides
    the randomness (as the official `force_drop_ids`). Returns a new label array.
    """
    xp = get_array_module(y)
    if force_drop_ids is not None:
        drop = xp.asarray(force_drop_ids) == 1
    elif prob > 0:
        if rng is None:
            raise ValueError("drop_labels: prob > 0 needs a random generator (rng)")
        # torch.rand(N) < p in the official code; drawn on the host so CPU and GPU agree
        drop = rng.uniform((y.shape[0],), dtype="float64", device=device_of(y)) < prob
    else:
        return y.copy()
    return xp.where(drop, num_classes, y)


def check_labels(y, rows):
    """ValueError unless host labels y lie in [0, rows). Labels already on the GPU are not read
    (that would cost a device-to-host sync on every forward): the data stream and the sampler
    check theirs on the host, before they move them."""
    if get_array_module(y) is np:
        y = np.asarray(y)
        if y.size and (y.min() < 0 or y.max() >= rows):
            bad = int(y.min()) if y.min() < 0 else int(y.max())
            raise ValueError(f"label embedding: class id {bad} outside [0, {rows}) "
                             f"(the table has {rows} rows)")


def label_embed_forward(y, table):
    """y (N,) int in [0, rows), host or device, table (rows, D) -> (N, D), a row lookup."""
    check_labels(y, table.shape[0])
    y = get_array_module(table).asarray(y)
    return table[y], (y, table.shape[0])


# exercise: 3.1 Classifier-free guidance
def label_embed_backward(dout, cache):
    """dout (N, D) -> dtable (rows, D).

    A lookup's gradient scatters dout into the rows that were read, summing repeats. We write
    it as a one-hot matrix product, which runs the same on NumPy and CuPy (np.add.at is
    CPU-only and slow).
    """
    y, rows = cache
    xp = get_array_module(dout)
    # out = table[y]  =>  dtable = onehot(y)^T @ dout
    onehot = (y[:, None] == xp.arange(rows)[None, :]).astype(dout.dtype)  # (N, rows)
    return onehot.T @ dout
