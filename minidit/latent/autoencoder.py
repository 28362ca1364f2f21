"""Latent diffusion's first stage (paper section 3.1, docs/paper.md §4.2): a miniature Stable-Diffusion
VAE (AutoencoderKL) with its loss and hand-written gradient, and the encoder/decoder objects
the DiT commands use to train on, and sample from, its latents.

The encoder outputs a diagonal Gaussian posterior q(z | x) = N(mean, exp(logvar)) per latent
element; training decodes a reparameterised sample z = mean + exp(logvar / 2) eps and minimises
    loss = mean over pixels of (D(z) - x)^2 + kl_weight * mean over latent elements of KL(q || N(0, 1)).
SD trains with L1 + LPIPS + a patch GAN; we keep the MSE term alone (no perceptual network to
build), which is also what PSNR measures. DiT encodes with a fresh posterior sample times a
scale factor (0.18215 for SD) every step; ours is 1 / std of the latents, measured on the data.
"""
import math
import os
from dataclasses import asdict, dataclass

import numpy as np

from ..backend import device_of, get_array_module, to_device
from ..training.checkpoint import find_checkpoint, load_checkpoint
from ..training.data import to_model_space
from ..training.parallel import DataParallel
from .vae_blocks import decoder_plan, encoder_plan, plan_backward, plan_forward, plan_param_shapes

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0  # SD's DiagonalGaussianDistribution clamps the log-variance


@dataclass(frozen=True)
class VAEConfig:
    """The AutoencoderKL shape: channels base * ch_mult[i] at level i, len(ch_mult) - 1 halvings."""
    in_channels: int = 3
    z_channels: int = 4
    base_channels: int = 16
    ch_mult: tuple = (1, 2, 4)
    num_res_blocks: int = 1
    num_groups: int = 8

    def __post_init__(self):
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        for f in ("in_channels", "z_channels", "base_channels", "num_res_blocks", "num_groups"):
            v = getattr(self, f)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"VAEConfig.{f} must be a positive integer, got {v!r}")
        if not self.ch_mult or min(self.ch_mult) < 1:
            raise ValueError(f"VAEConfig.ch_mult must be positive integers, got {self.ch_mult}")
        for m in self.ch_mult:
            if (self.base_channels * m) % self.num_groups:
                raise ValueError(f"VAEConfig: {self.base_channels * m} channels do not split into "
                                 f"num_groups={self.num_groups} groups")

    @property
    def downsample(self):
        """The spatial factor f: an H x W image becomes an H/f x W/f latent."""
        return 2 ** (len(self.ch_mult) - 1)

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        return cls(**{**d, "ch_mult": tuple(d["ch_mult"])})


# Channel multipliers per level for each downsampling factor; f = 8 is SD's (1, 2, 4, 4) on a
# base of 16 channels instead of 128.
CH_MULT = {4: (1, 2, 4), 8: (1, 2, 4, 4)}


def vae_config(downsample=4, **overrides):
    """The default miniature VAE for downsampling factor 4 (32x32x3 -> 8x8x4) or 8 (64x64x3 -> 8x8x4)."""
    if downsample not in CH_MULT:
        raise ValueError(f"downsampling factor must be one of {sorted(CH_MULT)}, got {downsample}")
    return VAEConfig(**{"ch_mult": CH_MULT[downsample], **overrides})


def param_shapes(cfg):
    """{key: shape} of every parameter, keyed like diffusers' AutoencoderKL (.w/.b for weight/bias)."""
    return {**plan_param_shapes(encoder_plan(cfg)), **plan_param_shapes(decoder_plan(cfg))}


def init_params(cfg, seed=0, dtype=np.float32, device=None):
    """PyTorch's default init: conv weight and bias U(-1/sqrt(fan_in), +); GroupNorm gamma 1, beta 0."""
    rng = np.random.default_rng(seed)
    shapes = param_shapes(cfg)
    P = {}
    for k, shape in shapes.items():
        if len(shapes[k[:-2] + ".w"]) == 1:  # a GroupNorm's gamma and beta
            P[k] = np.ones(shape) if k.endswith(".w") else np.zeros(shape)
        else:  # a conv: fan_in = C_in * k * k of its weight
            bound = 1.0 / math.sqrt(math.prod(shapes[k[:-2] + ".w"][1:]))
            P[k] = rng.uniform(-bound, bound, shape)
    return {k: to_device(v.astype(dtype), device) for k, v in P.items()}


# exercise: 3.1 Latent diffusion
def posterior_forward(moments, eps):
    """moments (N, 2z, h, w) = [mean, raw log-variance], eps (N, z, h, w) ~ N(0, 1)
    -> z = mean + exp(logvar / 2) eps (N, z, h, w), kl (N, z, h, w) per element, cache.

    mean is the first z channels of moments, raw the last z; logvar = raw clipped to
    [LOGVAR_MIN, LOGVAR_MAX] = [-30, 20]. kl = 0.5 (mean^2 + exp(logvar) - 1 - logvar), the KL of
    N(mean, exp(logvar)) to N(0, 1) per element. cache = (mean, std, eps, inside): std =
    exp(logvar / 2) and inside the boolean mask LOGVAR_MIN <= raw <= LOGVAR_MAX (all (N, z, h, w)).
    """
    xp = get_array_module(moments)
    mean, raw = xp.split(moments, 2, axis=1)
    logvar = xp.clip(raw, LOGVAR_MIN, LOGVAR_MAX)
    std = xp.exp(0.5 * logvar)
    z = mean + std * eps
    var = std * std
    kl = 0.5 * (mean * mean + var - 1.0 - logvar)  # KL(N(mean, var) || N(0, 1)), one per element
    inside = (raw >= LOGVAR_MIN) & (raw <= LOGVAR_MAX)
    return z, kl, (mean, std, eps, inside)


# exercise: 3.1 Latent diffusion
def posterior_backward(dz, dkl, cache):
    """dz, dkl (N, z, h, w), cache from posterior_forward -> dmoments (N, 2z, h, w) =
    [dmean, draw]: the gradient of the mean channels, then of the raw log-variance channels. No
    gradient passes the clip where it is flat: draw is 0 wherever raw lies outside [-30, 20]
    (as torch.clamp)."""
    xp = get_array_module(dz)
    mean, std, eps, inside = cache
    # z = mean + std * eps;  kl = 0.5 (mean^2 + std^2 - 1 - logvar)
    dmean = dz + dkl * mean
    # std = exp(logvar / 2): dz/dlogvar = 0.5 std eps;  dkl/dlogvar = 0.5 (std^2 - 1)
    dlogvar = 0.5 * (dz * std * eps + dkl * (std * std - 1.0))
    # logvar = clip(raw, -30, 20): the gradient passes only inside the range (as torch.clamp)
    dlogvar *= inside
    return xp.concatenate([dmean, dlogvar], axis=1)


def vae_forward(P, cfg, x, eps, kl_weight):
    """The training loss. x (N, C, H, W) in [-1, 1], eps (N, z, H/f, W/f) -> loss (scalar), cache.

    loss = mean((D(z) - x)^2) + kl_weight * mean(KL) with z = mean + std * eps.
    """
    moments, c_enc = plan_forward(P, encoder_plan(cfg), x, cfg.num_groups)
    z, kl, c_post = posterior_forward(moments, eps)
    xrec, c_dec = plan_forward(P, decoder_plan(cfg), z, cfg.num_groups)
    err = xrec - x
    rec, kl_mean = (err * err).mean(), kl.mean()
    loss = rec + kl_weight * kl_mean
    stats = {"rec": rec, "kl": kl_mean, "xrec": xrec}
    return loss, (cfg, err, kl.shape, kl_weight, c_enc, c_post, c_dec, stats)


def vae_backward(dloss, cache):
    """dloss (scalar) -> grads keyed like the parameters (the image gets no gradient)."""
    cfg, err, kl_shape, kl_weight, c_enc, c_post, c_dec, _ = cache
    xp = get_array_module(err)
    # loss = mean(err^2) + kl_weight * mean(kl), err = xrec - x
    dxrec = err * (2.0 * dloss / err.size)
    dkl = xp.ones(kl_shape, dtype=err.dtype) * (kl_weight * dloss / math.prod(kl_shape))
    # xrec = decoder(z)
    dz, grads = plan_backward(dxrec, c_dec, decoder_plan(cfg))
    # z, kl = posterior(moments)
    dmoments = posterior_backward(dz, dkl, c_post)
    # moments = encoder(x)
    _, g_enc = plan_backward(dmoments, c_enc, encoder_plan(cfg), need_dx=False)
    grads.update(g_enc)
    return grads


def encode_moments(P, cfg, x):
    """x (N, C, H, W) -> posterior mean and clamped log-variance, each (N, z, H/f, W/f)."""
    xp = get_array_module(x)
    moments, _ = plan_forward(P, encoder_plan(cfg), x, cfg.num_groups, keep_caches=False)
    mean, raw = xp.split(moments, 2, axis=1)
    return mean, xp.clip(raw, LOGVAR_MIN, LOGVAR_MAX)


def decode_latents(P, cfg, z):
    """Unscaled latents (N, z, h, w) -> images (N, C, f h, f w), roughly in [-1, 1]."""
    return plan_forward(P, decoder_plan(cfg), z, cfg.num_groups, keep_caches=False)[0]


def psnr(x, y):
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2) over all their pixels: 10 log10(4 / MSE)."""
    xp = get_array_module(x)
    mse = float(((xp.clip(x, -1, 1) - y) ** 2).mean())
    return 10.0 * math.log10(4.0 / mse) if mse > 0 else float("inf")


class VAEEncoder:
    """What the DiT commands need from a trained VAE, on one device.

    sample_latents(x, rng) draws a fresh posterior sample every call and multiplies it by
    `scale`, as DiT's train.py does with vae.encode(x).latent_dist.sample() * 0.18215;
    decode(z) undoes the scale and runs the decoder, as vae.decode(z / 0.18215).
    """

    def __init__(self, params, cfg, scale):
        self.params, self.cfg, self.scale = params, cfg, float(scale)
        self.latent_channels = cfg.z_channels

    def latent_size(self, image_size):
        f = self.cfg.downsample
        if image_size % f:
            raise ValueError(f"image size {image_size} is not divisible by the VAE's downsampling factor {f}")
        return image_size // f

    def encode_mean(self, x):
        """x (N, C, H, W) in [-1, 1] -> scaled posterior means (N, z, H/f, W/f)."""
        return encode_moments(self.params, self.cfg, x)[0] * self.scale

    def sample_latents(self, x, rng):
        """x (N, C, H, W) in [-1, 1], rng a minidit Generator -> scaled posterior samples."""
        xp = get_array_module(x)
        mean, logvar = encode_moments(self.params, self.cfg, x)
        eps = rng.normal(mean.shape, dtype=mean.dtype, device=device_of(mean))
        return (mean + xp.exp(0.5 * logvar) * eps) * self.scale

    def decode(self, z):
        """Scaled latents (N, z, h, w) -> images (N, C, f h, f w) in about [-1, 1]."""
        return decode_latents(self.params, self.cfg, z / self.scale)


class EncodedDataset:
    """The posterior of every training image, and of its mirror image, encoded once.

    DiT's train.py encodes each batch again at every step. The encoder is frozen and a flip is
    the only augmentation, so every image has just two possible inputs: encoding both once
    leaves the same posteriors to sample from, and a training step then costs only the DiT.
    sample(index, flip, rng) draws a fresh posterior sample per image, as sample_latents does,
    with the same random draws. The table is built in fixed chunks, whatever the training
    order, so a resumed run sees the same numbers.
    """

    CHUNK = 32  # images encoded at once (256, with every layer's cache kept, took 1.38 times as long:
    #             benchmarks/bench_encode.py, docs/performance.md)

    def __init__(self, encoder, images, parallel=None, progress=False):
        from tqdm.auto import tqdm
        self.encoder = encoder
        xp = get_array_module(encoder.params[next(iter(encoder.params))])
        n = len(images)
        chunks = [slice(a, min(a + self.CHUNK, n)) for a in range(0, n, self.CHUNK)]
        parallel = parallel or DataParallel(1)
        means, logvars = [], []
        bar = tqdm(total=2 * n, disable=not progress, desc="encode", dynamic_ncols=True)

        def encode(s, mirror):
            u8 = images[s][:, :, ::-1] if mirror else images[s]          # (b, H, W, C) uint8
            moments = encode_moments(encoder.params, encoder.cfg, to_model_space(xp.asarray(u8)))
            bar.update(s.stop - s.start)
            return moments

        for mirror in (False, True):
            for m, lv in parallel.each(lambda s: encode(s, mirror), chunks):
                means.append(m)
                logvars.append(lv)
        bar.close()
        half = len(chunks)
        self.mean = xp.stack([xp.concatenate(means[:half]), xp.concatenate(means[half:])], axis=1)
        self.std = xp.exp(0.5 * xp.stack([xp.concatenate(logvars[:half]), xp.concatenate(logvars[half:])], axis=1))

    def sample(self, index, flip, rng):
        """Scaled posterior samples (B, z, h, w) of dataset rows `index`, mirrored where `flip`."""
        xp = get_array_module(self.mean)
        index, flip = xp.asarray(index), xp.asarray(np.asarray(flip, dtype=np.int64))
        mean, std = self.mean[index, flip], self.std[index, flip]
        eps = rng.normal(mean.shape, dtype=mean.dtype, device=device_of(mean))
        return (mean + std * eps) * self.encoder.scale


_ENCODED = {}


def encoded_dataset(encoder, images, key, parallel=None, progress=False):
    """(EncodedDataset, reused): the table of the VAE file key[0] for the data the rest of `key`
    names, kept from the previous call when both are the same. The table depends only on them,
    so runs that follow each other in one process (minidit.experiments trains dozens) encode the
    data once; the key takes the file's size and modification time, so a rewritten VAE file is
    encoded again. Only the last table is kept."""
    st = os.stat(key[0])
    key = (os.path.realpath(key[0]), st.st_size, st.st_mtime_ns, *key[1:],
           str(device_of(next(iter(encoder.params.values())))))
    if key not in _ENCODED:
        _ENCODED.clear()
        _ENCODED[key] = EncodedDataset(encoder, images, parallel, progress=progress)
        return _ENCODED[key], False
    return _ENCODED[key], True


def load_vae(path, device=None):
    """(params, cfg, meta) of a VAE checkpoint written by `python -m minidit.train_vae`."""
    meta, groups = load_checkpoint(find_checkpoint(path))
    if meta.get("kind") != "vae" or "model" not in groups:
        raise ValueError(f"{path} is not a VAE checkpoint (kind {meta.get('kind', 'DiT')!r}); "
                         "train one with `python -m minidit.train_vae`")
    cfg = VAEConfig.from_dict(meta["config"])
    return to_device(groups["model"], device), cfg, meta


def _scale(meta, latent_scale, path):
    scale = latent_scale if latent_scale is not None else meta.get("latent_scale")
    if scale is None:
        raise ValueError(f"{path} holds no latent_scale (its training did not finish): pass "
                         "latent_scale= or use the final checkpoint")
    return scale


def load_vae_encoder(path, device=None, latent_scale=None):
    """A VAEEncoder (encode, sample, decode) from a VAE checkpoint file."""
    params, cfg, meta = load_vae(path, device)
    return VAEEncoder(params, cfg, _scale(meta, latent_scale, path))


def load_vae_decoder(path, device=None, latent_scale=None):
    """The function z -> image of a VAE checkpoint, z scaled by latent_scale (default: the file's)."""
    return load_vae_encoder(path, device, latent_scale).decode
