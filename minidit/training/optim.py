"""The optimiser and the weight average of DiT's training recipe (docs/paper.md §4.3).

DiT trains with torch.optim.AdamW (lr 1e-4 constant, betas (0.9, 0.999), eps 1e-8, weight decay
0, so in effect Adam) and keeps an exponential moving average (EMA, decay 0.9999) of the
weights, which is what every result in the paper is sampled from. Both work on flat dicts of
arrays keyed like the model's parameters, on NumPy or CuPy.

Beside the paper's optimiser, Muon (`--optimizer muon`, an optimiser that came after DiT) updates
the blocks' weight matrices along an orthogonalised momentum and leaves the rest to AdamW
(docs/objectives.md, "The Muon optimiser").
"""
import math

from .. import fused
from ..backend import cache_blocks, get_array_module, to_numpy
from .parallel import DataParallel

_IN_THIS_THREAD = DataParallel(1)  # what parallel=None means: every update in the caller's thread


def _check_like(ref, other, what):
    """Raise a clear error unless `other` has exactly the keys and shapes of `ref`."""
    missing = [k for k in ref if k not in other]
    extra = [k for k in other if k not in ref]
    if missing or extra:
        raise KeyError(f"{what}: missing keys {missing}, unexpected keys {extra}")
    for k, a in ref.items():
        if tuple(other[k].shape) != tuple(a.shape):
            raise ValueError(f"{what}: {k!r} has shape {tuple(other[k].shape)}, "
                             f"expected {tuple(a.shape)}")


# exercise: 4 Experimental setup
@fused.on_gpu(fused.adamw_update)  # on a GPU: one fused kernel instead of about twelve
def adamw_update(p, g, m, v, lr, b1, b2, eps, weight_decay, step_size, bc2_sqrt):
    """One AdamW update of one parameter, in place (p, m, v are overwritten; returns None).

    p: the parameter, g: its gradient, m and v: the first and second moments (all one shape).
    With the step's step_size = lr / (1 - b1^step) and bc2_sqrt = sqrt(1 - b2^step):
        p <- p (1 - lr weight_decay)        (decoupled weight decay, only when weight_decay != 0)
        m <- b1 m + (1 - b1) g
        v <- b2 v + (1 - b2) g^2
        p <- p - step_size m / (sqrt(v) / bc2_sqrt + eps)
    in this order, as torch.optim.AdamW does.
    """
    xp = get_array_module(p)
    # the same chain on cache-sized pieces of the four arrays (backend.cache_blocks)
    for p, g, m, v in cache_blocks(p, g, m, v):
        if weight_decay != 0:
            p *= 1 - lr * weight_decay   # decoupled decay: shrink the weight itself
        # m = b1*m + (1-b1)*g, written as torch writes it, m.lerp_(g, 1-b1) = m + (1-b1)(g-m)
        tmp = xp.subtract(g, m)
        tmp *= 1 - b1
        m += tmp
        # v = b2*v + (1-b2)*g*g   (torch: v.mul_(b2).addcmul_(g, g, value=1-b2))
        v *= b2
        xp.multiply(g, 1 - b2, out=tmp)
        tmp *= g
        v += tmp
        # denom = sqrt(v) / sqrt(bias_correction2) + eps
        denom = xp.sqrt(v)
        denom /= bc2_sqrt
        denom += eps
        # p -= step_size * m / denom   (torch: p.addcdiv_(m, denom, value=-step_size))
        xp.multiply(m, step_size, out=tmp)
        tmp /= denom
        p -= tmp


class AdamW:
    """AdamW (Loshchilov & Hutter) with PyTorch's arithmetic, step by step.

    params: dict name -> float array (N-D, any shape), the arrays the optimiser will update.
    The moments m (first) and v (second) are zeros of the same shapes, on the same device.
    step(params, grads) updates params in place; grads has the same keys and shapes.
    """

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        self.lr, self.betas, self.eps, self.weight_decay = lr, tuple(betas), eps, weight_decay
        self.step_count = 0
        self.m = {k: get_array_module(p).zeros_like(p) for k, p in params.items()}
        self.v = {k: get_array_module(p).zeros_like(p) for k, p in params.items()}

    def step(self, params, grads, parallel=None):
        """One update of every parameter, in place; returns nothing.

        The order of operations is torch.optim.AdamW's single-tensor path, so a float32 run
        stays within rounding of PyTorch's. parallel: an entered minidit.training.parallel.DataParallel
        to update different parameters on different worker threads (the same numbers).
        """
        _check_like(self.m, params, "params")
        _check_like(self.m, grads, "grads")
        self.step_count += 1
        b1, b2 = self.betas
        # Python floats, computed once per step as PyTorch does.
        bias_correction1 = 1 - b1 ** self.step_count
        bias_correction2 = 1 - b2 ** self.step_count
        step_size = self.lr / bias_correction1
        bias_correction2_sqrt = bias_correction2 ** 0.5

        def update(k):
            self._update(k, params[k], grads[k], step_size, bias_correction2_sqrt)

        (parallel or _IN_THIS_THREAD).each(update, list(params))

    def _update(self, k, p, g, step_size, bias_correction2_sqrt):
        """The update of parameter k (p in place, gradient g) with this step's Python scalars."""
        b1, b2 = self.betas
        adamw_update(p, g, self.m[k], self.v[k], self.lr, b1, b2, self.eps, self.weight_decay, step_size,
                     bias_correction2_sqrt)

    def state_dict(self):
        """Step count, hyperparameters and the moments as host NumPy arrays (for checkpoints)."""
        return {"step": self.step_count, "lr": self.lr, "betas": self.betas, "eps": self.eps,
                "weight_decay": self.weight_decay,
                "m": {k: to_numpy(a).copy() for k, a in self.m.items()},
                "v": {k: to_numpy(a).copy() for k, a in self.v.items()}}

    def load_state_dict(self, state):
        """Restore a state_dict; the moments are copied onto the device the params live on.

        "step", "m" and "v" are required; the hyperparameters are restored when present (as
        PyTorch does) and otherwise keep the values given to the constructor.
        """
        _check_like(self.m, state["m"], "optimizer state m")
        _check_like(self.v, state["v"], "optimizer state v")
        self.step_count = int(state["step"])
        self.lr, self.eps = state.get("lr", self.lr), state.get("eps", self.eps)
        self.betas = tuple(state.get("betas", self.betas))
        self.weight_decay = state.get("weight_decay", self.weight_decay)
        for k in self.m:
            xp = get_array_module(self.m[k])
            self.m[k][...] = xp.asarray(state["m"][k])
            self.v[k][...] = xp.asarray(state["v"][k])


# Muon's orthogonalising iteration: x <- a x + (b A + c A^2) x with A = x x^T, five times. The three
# coefficients push every singular value of a normalised matrix into roughly [0.7, 1.2] in a few
# steps; they are the published choice of Muon's authors (Jordan et al., 2024).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(g, steps=5):
    """The nearest (semi-)orthogonal matrix to g, approximately: U V^T of g's SVD g = U S V^T,
    reached by a Newton-Schulz iteration of matrix products alone (no SVD). g (rows, cols), float32.

    g is first scaled to Frobenius norm 1 (so every singular value is at most 1); each step maps a
    singular value s to a s + b s^3 + c s^5, an odd polynomial that drives small values up fast
    (about 3.4 times a step) and keeps those near 1 between about 0.7 and 1.2 (not exactly 1: the
    price of five steps). Values within about a hundredth of the largest all end in that band; the
    very smallest are raised a hundredfold or more but stay below it. The products run on the
    smaller side: a tall g is transposed.
    """
    xp = get_array_module(g)
    a, b, c = NS_COEFFICIENTS
    x = g / (xp.sqrt((g * g).sum()) + 1e-7)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    for _ in range(steps):
        gram = x @ x.T  # (r, r), r = the smaller side
        poly = b * gram + c * (gram @ gram)
        x = a * x + poly @ x
    return x.T if tall else x


# The root-mean-square size of a Muon step over the learning rate that matches an AdamW step's
# (Liu et al., 2025): Muon's default, `--muon-rms`.
MUON_RMS = 0.2


def muon_matrices(params):
    """The keys Muon updates: the 2-D weights inside the transformer blocks (qkv, proj, the MLP's two
    layers), except the adaLN regressions, which map the conditioning rather than the tokens. The
    embeddings, the final layer, biases and norms stay with AdamW, as Muon's authors advise."""
    return [k for k, p in params.items()
            if k.startswith("blocks.") and p.ndim == 2 and ".adaLN_modulation." not in k]


class Muon(AdamW):
    """Muon (Jordan et al., 2024) for the blocks' weight matrices, AdamW for every other parameter.

    For a weight matrix W with gradient G, Muon keeps a momentum m <- mu m + G and steps along the
    orthogonalised Nesterov direction O = orthogonalize(G + mu m):
        W <- W (1 - lr weight_decay) - lr * rms * sqrt(max(rows, cols)) * O.
    O has all its singular values near 1, so every direction of the update moves by about the same
    amount, where Adam's update is dominated by a few. rms = 0.2 (MUON_RMS) gives O about the size of an
    AdamW update (Liu et al., 2025, "Muon is scalable"), so that lr, its schedule and the weight decay
    mean what they mean for the AdamW half; `--muon-rms` sets rms (the main job takes 0.5).

    The checkpoint format is AdamW's: m holds Muon's momentum for its matrices, and v stays zero
    for them (unused). momentum: mu (0.95); ns_steps: orthogonalize's steps (5).
    """

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, momentum=0.95,
                 ns_steps=5, rms=MUON_RMS):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        self.momentum, self.ns_steps, self.rms = momentum, ns_steps, rms
        self.matrices = set(muon_matrices(params))

    def _update(self, k, p, g, step_size, bias_correction2_sqrt):
        """Muon's update for self.matrices (AdamW.step calls it per key), AdamW's for the rest."""
        if k not in self.matrices:
            return super()._update(k, p, g, step_size, bias_correction2_sqrt)
        m, mu = self.m[k], self.momentum
        m *= mu
        m += g
        o = orthogonalize(g + mu * m, self.ns_steps)  # Nesterov: the gradient plus the new momentum
        if self.weight_decay != 0:
            p *= 1 - self.lr * self.weight_decay
        p -= (self.lr * self.rms * math.sqrt(max(p.shape))) * o.astype(p.dtype, copy=False)

    def state_dict(self):
        return dict(super().state_dict(), momentum=self.momentum, ns_steps=self.ns_steps, rms=self.rms)

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.momentum = state.get("momentum", self.momentum)
        self.ns_steps = state.get("ns_steps", self.ns_steps)
        self.rms = state.get("rms", self.rms)


OPTIMIZERS = {"adamw": AdamW, "muon": Muon}


LR_SCHEDULES = ("constant", "cosine", "linear")


def lr_at(step, lr, total_steps, warmup=0, schedule="constant", final_fraction=0.0):
    """The learning rate of training step `step` (1-based) under a warm-up and a decay.

    The paper trains at a constant 1e-4 with no warm-up ("constant", warmup 0: lr at every step).
    A run of a few thousand steps learns faster with a short linear warm-up (lr * step / warmup for
    the first `warmup` steps) followed by a decay that ends at lr * final_fraction on the last
    step: "cosine" (half a cosine wave) or "linear". A pure function of the step, so a resumed run
    uses the same rate at every step as an uninterrupted one.
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
    if warmup and step <= warmup:
        return lr * step / warmup
    if schedule == "constant" or total_steps <= warmup:
        return lr
    progress = min(1.0, (step - warmup) / (total_steps - warmup))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
    return lr * (final_fraction + (1 - final_fraction) * shape)


def init_ema(params):
    """The EMA weights at the start: an exact copy of params.

    DiT does the same with deepcopy(model) followed by update_ema(ema, model, decay=0).
    """
    return {k: p.copy() for k, p in params.items()}


# exercise: 4 Experimental setup
@fused.on_gpu(fused.ema_update)  # on a GPU: one fused kernel
def ema_step(e, p, decay):
    """e <- decay e + (1 - decay) p, in place, for one EMA weight e and its parameter p (same
    shape); returns None."""
    xp = get_array_module(e)
    for e, p in cache_blocks(e, p):
        e *= decay
        e += xp.multiply(p, 1 - decay)


def ema_update(ema_params, params, decay=0.9999, parallel=None):
    """ema <- decay * ema + (1 - decay) * param, in place, for every key (docs/paper.md §4.3).

    Called after every optimiser step; no warm-up and no bias correction, as in DiT's train.py
    (ema.mul_(decay).add_(param, alpha=1 - decay)). Frozen entries such as pos_embed are
    averaged too and only pick up rounding.
    """
    _check_like(ema_params, params, "ema params")

    def update(k):
        ema_step(ema_params[k], params[k], decay)

    (parallel or _IN_THIS_THREAD).each(update, list(ema_params))
