"""The Stable Diffusion VAE (diffusers' AutoencoderKL) from minidit's own layers, forward only
(docs/paper.md §4.2, §6.3): what turns the released DiT's 32x32x4 latents into 256x256 pictures.

It is the big sibling of minidit.latent.vae_blocks (same resnet blocks, GroupNorm 32 with eps
1e-6, nearest 2x upsampling + 3x3 conv), with what the miniature leaves out: a middle block of
resnet - single-head self-attention over the H*W positions - resnet, one more resnet per decoder
level than per encoder level, and downsampling convs that pad only right and bottom. Weights keep
diffusers' names and PyTorch's layouts (conv (C_out, C_in, k, k), linear (out, in)).

Inference only: convolutions use conv2d_infer, which never holds a whole im2col matrix (0.6 GB
for one 256x256 map of 256 channels), and no layer keeps a cache. Latents are scaled by
`scaling_factor` (0.18215): DiT's z = 0.18215 * sample of the posterior, and decode(z / 0.18215).
"""
import re
from dataclasses import dataclass, fields

import numpy as np

from ..backend import device_of, get_array_module, to_device
from ..layers import silu_forward
from ..layers.attention import sdpa_forward
from ..layers.conv2d import conv2d_infer
from ..layers.groupnorm import groupnorm_forward
from ..layers.upsample import upsample2x_forward

GN_EPS = 1e-6
# the attention's two spellings: old diffusers files -> current names
_OLD_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_OLD_NAME = re.compile(r"(\.attentions\.\d+\.)(query|key|value|proj_attn)\.")


@dataclass(frozen=True)
class SDVAEConfig:
    """The fields of an AutoencoderKL config.json that decide its shape (defaults: sd-vae-ft-mse)."""
    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    block_out_channels: tuple = (128, 256, 512, 512)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True

    @property
    def downsample(self):
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def from_json(cls, d):
        """From a diffusers config.json dict; unknown keys (block types, act_fn, ...) are checked
        where they matter and otherwise ignored."""
        if d.get("act_fn", "silu") != "silu":
            raise ValueError(f"SD VAE config: act_fn {d['act_fn']!r} is not supported (only silu)")
        kw = {f.name: d[f.name] for f in fields(cls) if f.name in d and d[f.name] is not None}
        if "block_out_channels" in kw:
            kw["block_out_channels"] = tuple(kw["block_out_channels"])
        return cls(**kw)


def normalise_names(sd):
    """{name: array} with '.weight'/'.bias' names, the attention's old spelling mapped to the current
    one and 1x1-conv attention weights reshaped to linear ones."""
    out = {}
    for k, v in sd.items():
        name = _OLD_NAME.sub(lambda m: m.group(1) + _OLD_ATTENTION[m.group(2)] + ".", k)
        if ".attentions." in name and v.ndim == 4 and v.shape[2:] == (1, 1):
            v = v.reshape(v.shape[:2])
        out[name] = v
    return out


def config_from_weights(sd):
    """An SDVAEConfig read off the weights' shapes (when there is no config.json)."""
    if "decoder.conv_in.weight" not in sd or "encoder.conv_in.weight" not in sd:
        raise ValueError("not an AutoencoderKL state_dict: no encoder.conv_in / decoder.conv_in weights "
                         "(is this the DiT's file?)")
    levels = sorted({int(k.split(".")[2]) for k in sd if k.startswith("encoder.down_blocks.")})
    chans = tuple(int(sd[f"encoder.down_blocks.{i}.resnets.0.conv2.weight"].shape[0]) for i in levels)
    per = len({k.split(".")[4] for k in sd if k.startswith("encoder.down_blocks.0.resnets.")})
    return SDVAEConfig(in_channels=int(sd["encoder.conv_in.weight"].shape[1]),
                       out_channels=int(sd["decoder.conv_out.weight"].shape[0]),
                       latent_channels=int(sd["decoder.conv_in.weight"].shape[1]), block_out_channels=chans,
                       layers_per_block=per, use_quant_conv="quant_conv.weight" in sd,
                       use_post_quant_conv="post_quant_conv.weight" in sd,
                       mid_block_add_attention="encoder.mid_block.attentions.0.to_q.weight" in sd)


class SDVAE:
    """An AutoencoderKL's weights (diffusers names) and config, with encode and decode."""

    def __init__(self, params, cfg, device=None):
        self.cfg = cfg
        self.P = {k: to_device(np.ascontiguousarray(v, dtype=np.float32), device) for k, v in params.items()}
        shapes = param_shapes(cfg)
        missing = sorted(set(shapes) - set(self.P))
        if missing:
            raise ValueError(f"SD VAE weights lack {len(missing)} arrays the config needs, e.g. {missing[:3]}")
        for k, shape in shapes.items():
            if tuple(self.P[k].shape) != shape:
                raise ValueError(f"SD VAE weight {k} has shape {tuple(self.P[k].shape)}, the config needs {shape}")

    # -- the building blocks -------------------------------------------------------------------
    def conv(self, name, x, stride=1, pad=None):
        w = self.P[name + ".weight"]
        return conv2d_infer(x, w, self.P[name + ".bias"], stride, w.shape[-1] // 2 if pad is None else pad)

    def norm(self, name, x):
        return groupnorm_forward(x, self.P[name + ".weight"], self.P[name + ".bias"],
                                 self.cfg.norm_num_groups, GN_EPS)[0]

    def resnet(self, pre, x):
        h = self.conv(pre + "conv1", silu_forward(self.norm(pre + "norm1", x))[0])
        h = self.conv(pre + "conv2", silu_forward(self.norm(pre + "norm2", h))[0])
        if pre + "conv_shortcut.weight" in self.P:
            x = self.conv(pre + "conv_shortcut", x)
        h += x
        return h

    def attention(self, pre, x):
        """Single-head self-attention over the H*W positions, with a residual (diffusers' Attention)."""
        xp = get_array_module(x)
        N, C, H, W = x.shape
        h = self.norm(pre + "group_norm", x).reshape(N, C, H * W).transpose(0, 2, 1)  # (N, HW, C)

        def lin(name, a):
            return a @ self.P[pre + name + ".weight"].T + self.P[pre + name + ".bias"]

        q, k, v = (lin(n, h)[:, None] for n in ("to_q", "to_k", "to_v"))  # (N, 1 head, HW, C)
        o = lin("to_out.0", sdpa_forward(q, k, v)[0][:, 0])  # (N, HW, C)
        return xp.ascontiguousarray(o.transpose(0, 2, 1)).reshape(N, C, H, W) + x

    def mid_block(self, pre, x):
        x = self.resnet(pre + "resnets.0.", x)
        if self.cfg.mid_block_add_attention:
            x = self.attention(pre + "attentions.0.", x)
        return self.resnet(pre + "resnets.1.", x)

    # -- the two networks ----------------------------------------------------------------------
    def encode_moments(self, x):
        """Images (N, 3, H, W) in [-1, 1] -> (mean, logvar) of the posterior, each (N, 4, H/8, W/8)."""
        cfg = self.cfg
        h = self.conv("encoder.conv_in", x)
        for i in range(len(cfg.block_out_channels)):
            for j in range(cfg.layers_per_block):
                h = self.resnet(f"encoder.down_blocks.{i}.resnets.{j}.", h)
            if i < len(cfg.block_out_channels) - 1:  # stride 2, padded on the right and bottom only
                h = self.conv(f"encoder.down_blocks.{i}.downsamplers.0.conv", h, stride=2, pad=(0, 1, 0, 1))
        h = self.mid_block("encoder.mid_block.", h)
        h = self.conv("encoder.conv_out", silu_forward(self.norm("encoder.conv_norm_out", h))[0])
        if cfg.use_quant_conv:
            h = self.conv("quant_conv", h)
        mean, logvar = h[:, :cfg.latent_channels], h[:, cfg.latent_channels:]
        return mean, get_array_module(h).clip(logvar, -30.0, 20.0)

    def decode(self, z):
        """Latents (N, 4, h, w) as the VAE sees them (already divided by scaling_factor) ->
        images (N, 3, 8h, 8w), nominally in [-1, 1]."""
        cfg = self.cfg
        if cfg.use_post_quant_conv:
            z = self.conv("post_quant_conv", z)
        h = self.mid_block("decoder.mid_block.", self.conv("decoder.conv_in", z))
        for i in range(len(cfg.block_out_channels)):
            for j in range(cfg.layers_per_block + 1):
                h = self.resnet(f"decoder.up_blocks.{i}.resnets.{j}.", h)
            if i < len(cfg.block_out_channels) - 1:  # nearest 2x, then a 3x3 conv
                h = self.conv(f"decoder.up_blocks.{i}.upsamplers.0.conv", upsample2x_forward(h)[0])
        return self.conv("decoder.conv_out", silu_forward(self.norm("decoder.conv_norm_out", h))[0])

    # -- what DiT uses -------------------------------------------------------------------------
    def encode_latents(self, x, rng=None):
        """DiT's training latents: scaling_factor * a posterior sample (the mean without rng)."""
        mean, logvar = self.encode_moments(x)
        if rng is None:
            return mean * self.cfg.scaling_factor
        eps = rng.normal(mean.shape, dtype=mean.dtype, device=device_of(mean))
        return (mean + get_array_module(mean).exp(0.5 * logvar) * eps) * self.cfg.scaling_factor

    def decode_latents(self, z, batch=1):
        """DiT's latents -> images: decode(z / scaling_factor), `batch` images at a time (memory)."""
        xp = get_array_module(z)
        parts = [self.decode(z[i:i + batch] / self.cfg.scaling_factor) for i in range(0, z.shape[0], batch)]
        return xp.concatenate(parts) if len(parts) > 1 else parts[0]


def param_shapes(cfg):
    """{name: shape} of every weight of an AutoencoderKL of this config (PyTorch layouts)."""
    s = {}

    def conv(n, ci, co, k):
        s[n + ".weight"], s[n + ".bias"] = (co, ci, k, k), (co,)

    def vec(n, c):  # a GroupNorm's scale and shift
        s[n + ".weight"], s[n + ".bias"] = (c,), (c,)

    def resnet(pre, ci, co):
        vec(pre + "norm1", ci), conv(pre + "conv1", ci, co, 3), vec(pre + "norm2", co), conv(pre + "conv2", co, co, 3)
        if ci != co:
            conv(pre + "conv_shortcut", ci, co, 1)

    def mid(pre, c):
        resnet(pre + "resnets.0.", c, c)
        if cfg.mid_block_add_attention:
            vec(pre + "attentions.0.group_norm", c)
            for n in ("to_q", "to_k", "to_v", "to_out.0"):  # linear layers (out, in)
                s[pre + "attentions.0." + n + ".weight"], s[pre + "attentions.0." + n + ".bias"] = (c, c), (c,)
        resnet(pre + "resnets.1.", c, c)

    ch, z = cfg.block_out_channels, cfg.latent_channels
    conv("encoder.conv_in", cfg.in_channels, ch[0], 3)
    c = ch[0]
    for i, co in enumerate(ch):
        for j in range(cfg.layers_per_block):
            resnet(f"encoder.down_blocks.{i}.resnets.{j}.", c, co)
            c = co
        if i < len(ch) - 1:
            conv(f"encoder.down_blocks.{i}.downsamplers.0.conv", c, c, 3)
    mid("encoder.mid_block.", c)
    vec("encoder.conv_norm_out", c)
    conv("encoder.conv_out", c, 2 * z, 3)
    if cfg.use_quant_conv:
        conv("quant_conv", 2 * z, 2 * z, 1)
    if cfg.use_post_quant_conv:
        conv("post_quant_conv", z, z, 1)
    conv("decoder.conv_in", z, ch[-1], 3)
    mid("decoder.mid_block.", ch[-1])
    c = ch[-1]
    for i, co in enumerate(reversed(ch)):
        for j in range(cfg.layers_per_block + 1):
            resnet(f"decoder.up_blocks.{i}.resnets.{j}.", c, co)
            c = co
        if i < len(ch) - 1:
            conv(f"decoder.up_blocks.{i}.upsamplers.0.conv", c, c, 3)
    vec("decoder.conv_norm_out", c)
    conv("decoder.conv_out", c, cfg.out_channels, 3)
    return s


def param_names(cfg):
    """The weight names an AutoencoderKL of this config has (biases included)."""
    return list(param_shapes(cfg))
