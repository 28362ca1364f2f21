"""Softmax cross-entropy over class logits, the loss of the small classifier that judges
generated samples (minidit.evaluation.classifier). DiT itself never uses it:
the diffusion loss is the MSE and variational bound of minidit.diffusion.losses.
"""
from ..backend import get_array_module


def cross_entropy_forward(logits, y):
    """logits (N, K) float, y (N,) int in [0, K) -> mean over N of -log softmax(logits)[y], cache.

    The log-softmax subtracts each row's max before exp, so large logits do not overflow.
    The cache keeps the probabilities (N, K) and a one-hot of y (N, K): the backward needs
    nothing else. The one-hot is a comparison, not a scatter, so it runs on NumPy and CuPy.
    """
    xp = get_array_module(logits)
    N, K = logits.shape
    if y.shape != (N,):
        raise ValueError(f"cross entropy: labels have shape {tuple(y.shape)}, expected ({N},)")
    z = logits - logits.max(axis=1, keepdims=True)               # (N, K), max of each row is 0
    logsumexp = xp.log(xp.exp(z).sum(axis=1, keepdims=True))     # (N, 1)
    logp = z - logsumexp                                          # (N, K) log-probabilities
    onehot = (y[:, None] == xp.arange(K)[None, :]).astype(logits.dtype)  # (N, K)
    loss = -(logp * onehot).sum() / N
    return loss, (xp.exp(logp), onehot)


def cross_entropy_backward(dout, cache):
    """dout scalar (the upstream gradient of the mean loss) -> dlogits (N, K)."""
    p, onehot = cache
    N = p.shape[0]
    # loss = -(1/N) sum_n logp[n, y_n], logp = logits - logsumexp(logits)
    #   => dloss/dlogits = (softmax(logits) - onehot(y)) / N
    return (p - onehot) * (dout / N)
