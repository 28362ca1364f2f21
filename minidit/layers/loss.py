"""Mean squared error, the L_simple term of the DiT loss (paper section 3.1, docs/paper.md §3.4): the
hybrid loss of minidit.diffusion.losses calls it on the noise channels, per sample."""


def mse_forward(pred, target, per_sample=False):
    """pred, target (N, ...) -> scalar mean over everything, or (N,) means over non-batch axes."""
    diff = pred - target
    sq = diff * diff
    out = sq.reshape(sq.shape[0], -1).mean(axis=1) if per_sample else sq.mean()
    return out, (diff, per_sample)


def mse_backward(dout, cache):
    """dout scalar (or (N,) when per_sample) -> dpred like pred (the target gets no gradient)."""
    diff, per_sample = cache
    if per_sample:
        # out_n = mean over the M = size / N entries of sample n of diff^2
        m = diff[0].size
        return (dout.reshape((-1,) + (1,) * (diff.ndim - 1)) * (2.0 / m)) * diff
    # out = mean(diff^2) over all entries
    return (dout * (2.0 / diff.size)) * diff
