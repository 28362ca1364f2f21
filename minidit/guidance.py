"""Classifier-free guidance (paper section 3.1; docs/paper.md §1.7): one model trained with label
dropout is both conditional and unconditional, and sampling extrapolates from the second
towards the first, eps_hat = eps_u + s (eps_c - eps_u), with guidance scale s >= 1.
"""
import math

from .backend import get_array_module, on_device_of
from .model import dit_apply


def forward_with_cfg(params, x, t, y, guidance_scale, cfg, guidance="all"):
    """Classifier-free guidance on a doubled batch, as the official `forward_with_cfg`.

    x = [z; z], t duplicated, y = [labels; K...K] (2n rows); cfg is the model's DiTConfig. The
    first half of x is run twice in one batched forward, and eps_hat = eps_u + s (eps_c - eps_u)
    with s = guidance_scale is written to both halves.
    guidance="all": every noise channel is guided (the paper's equation; our default).
    guidance="official": only channels 0..2 are guided and channel 3 plus the variance channels
    pass through unguided, exactly as the released code (docs/paper.md §1.7). For 3-channel (RGB)
    models the two coincide on the noise channels.
    Returns (2n, C_out, I, I).
    """
    xp = get_array_module(x)
    C = cfg.in_channels
    if guidance == "all":
        n_guided = C
    elif guidance == "official":
        n_guided = 3
    elif isinstance(guidance, int) and not isinstance(guidance, bool) and 0 < guidance <= C:
        n_guided = guidance
    else:
        raise ValueError(f"forward_with_cfg: guidance must be 'all', 'official' or 1..{C}, got {guidance!r}")
    half = x[: x.shape[0] // 2]
    out = dit_apply(params, xp.concatenate([half, half], axis=0), on_device_of(x, t),
                    on_device_of(x, y), cfg)
    return guided_output(out, guidance_scale, n_guided)


# exercise: 3.1 Classifier-free guidance
def guided_output(out, guidance_scale, n_guided):
    """The guided output of a doubled batch: out (2n, C_out, I, I) -> (2n, C_out, I, I).

    Rows 0..n-1 of `out` are the conditional predictions, rows n..2n-1 the unconditional ones
    (the same images and timesteps with the null class). Channels 0..n_guided-1 are guided:
    eps_hat = eps_u + s (eps_c - eps_u) with s = guidance_scale, written to BOTH halves of the
    result. The other channels (the variance channels, and under guidance="official" channel 3)
    are passed through unchanged, row by row. Returns a new array; `out` is not modified.
    """
    xp = get_array_module(out)
    eps, rest = out[:, :n_guided], out[:, n_guided:]
    cond_eps, uncond_eps = xp.split(eps, 2, axis=0)
    half_eps = uncond_eps + guidance_scale * (cond_eps - uncond_eps)
    eps = xp.concatenate([half_eps, half_eps], axis=0)
    return xp.concatenate([eps, rest], axis=1)


def make_model_fn(params, cfg, y, guidance_scale=1.0, guidance="all"):
    """A sampler-ready function model_fn(x, t) -> (N, C_out, I, I) for class labels y (N,).

    With guidance_scale > 1 it runs guidance: the batch is doubled with the null class K and the
    guided first half is returned. With guidance_scale == 1 it is the plain conditional forward.
    """
    if not (math.isfinite(guidance_scale) and guidance_scale >= 1):
        raise ValueError(f"guidance scale must be >= 1, got {guidance_scale}")
    if guidance_scale > 1 and cfg.class_dropout_prob <= 0:
        raise ValueError("classifier-free guidance needs a model trained with label dropout "
                         "(class_dropout_prob > 0): it has no null class")

    def model_fn(x, t):
        xp = get_array_module(x)
        labels, t = on_device_of(x, y), on_device_of(x, t)
        if guidance_scale == 1:
            return dit_apply(params, x, t, labels, cfg)
        null = xp.full_like(labels, cfg.num_classes)
        out = forward_with_cfg(params, xp.concatenate([x, x]), xp.concatenate([t, t]),
                               xp.concatenate([labels, null]), guidance_scale, cfg, guidance)
        return out[: x.shape[0]]

    return model_fn
