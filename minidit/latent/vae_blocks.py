"""The encoder and decoder of a miniature Stable-Diffusion VAE (paper section 3.1, docs/paper.md §4.2),
as forward/backward pairs over a flat parameter dict keyed like diffusers' AutoencoderKL.

Both networks are a flat list of steps, the "plan", built from the config: the same plan
names the parameters (`param_shapes`), runs the forward, and is walked in reverse by the
backward. A step is one of
  ("conv", name, c_in, c_out, k, stride)   k x k convolution, padding k // 2
  ("res", prefix, c_in, c_out)             GroupNorm-SiLU-conv-GroupNorm-SiLU-conv + shortcut
  ("norm", name, c)  ("silu",)  ("up",)    GroupNorm, SiLU, nearest 2x upsampling
Deviations from SD, for speed on a CPU: the middle block is one residual block (SD: resnet,
self-attention, resnet); the decoder has as many residual blocks per level as the encoder (SD:
one more); downsampling pads 1 on every side (SD pads right and bottom only); no dropout.
"""
from ..layers import silu_backward, silu_forward
from ..layers.conv2d import conv2d_backward, conv2d_forward
from ..layers.groupnorm import groupnorm_backward, groupnorm_forward
from ..layers.upsample import upsample2x_backward, upsample2x_forward

GN_EPS = 1e-6  # every GroupNorm of the SD VAE


def encoder_plan(cfg):
    """Steps of the encoder: image (N, C, H, W) -> moments (N, 2 z, H/f, W/f) (mean, log-variance)."""
    ch = [cfg.base_channels * m for m in cfg.ch_mult]
    plan = [("conv", "encoder.conv_in", cfg.in_channels, ch[0], 3, 1)]
    c = ch[0]
    for i, co in enumerate(ch):
        for j in range(cfg.num_res_blocks):
            plan.append(("res", f"encoder.down_blocks.{i}.resnets.{j}.", c, co))
            c = co
        if i < len(ch) - 1:  # halve the resolution between levels
            plan.append(("conv", f"encoder.down_blocks.{i}.downsamplers.0.conv", c, c, 3, 2))
    plan += [("res", "encoder.mid_block.resnets.0.", c, c), ("norm", "encoder.conv_norm_out", c),
             ("silu",), ("conv", "encoder.conv_out", c, 2 * cfg.z_channels, 3, 1),
             ("conv", "quant_conv", 2 * cfg.z_channels, 2 * cfg.z_channels, 1, 1)]
    return plan


def decoder_plan(cfg):
    """Steps of the decoder: latent (N, z, H/f, W/f) -> image (N, C, H, W)."""
    ch = [cfg.base_channels * m for m in reversed(cfg.ch_mult)]
    z, c = cfg.z_channels, ch[0]
    plan = [("conv", "post_quant_conv", z, z, 1, 1), ("conv", "decoder.conv_in", z, c, 3, 1),
            ("res", "decoder.mid_block.resnets.0.", c, c)]
    for i, co in enumerate(ch):
        for j in range(cfg.num_res_blocks):
            plan.append(("res", f"decoder.up_blocks.{i}.resnets.{j}.", c, co))
            c = co
        if i < len(ch) - 1:  # double the resolution between levels: nearest 2x, then 3x3 conv
            plan += [("up",), ("conv", f"decoder.up_blocks.{i}.upsamplers.0.conv", c, c, 3, 1)]
    plan += [("norm", "decoder.conv_norm_out", c), ("silu",),
             ("conv", "decoder.conv_out", c, cfg.in_channels, 3, 1)]
    return plan


def plan_param_shapes(plan):
    """{key: shape} of the parameters a plan uses; conv weights are (C_out, C_in, k, k)."""
    s = {}
    for step in plan:
        if step[0] == "conv":
            _, name, ci, co, k, _ = step
            s[name + ".w"], s[name + ".b"] = (co, ci, k, k), (co,)
        elif step[0] == "norm":
            s[step[1] + ".w"], s[step[1] + ".b"] = (step[2],), (step[2],)
        elif step[0] == "res":
            _, pre, ci, co = step
            s.update({pre + "norm1.w": (ci,), pre + "norm1.b": (ci,),
                      pre + "conv1.w": (co, ci, 3, 3), pre + "conv1.b": (co,),
                      pre + "norm2.w": (co,), pre + "norm2.b": (co,),
                      pre + "conv2.w": (co, co, 3, 3), pre + "conv2.b": (co,)})
            if ci != co:
                s[pre + "conv_shortcut.w"], s[pre + "conv_shortcut.b"] = (co, ci, 1, 1), (co,)
    return s


def _conv(P, name, x, stride=1):
    w = P[name + ".w"]
    return conv2d_forward(x, w, P[name + ".b"], stride, w.shape[-1] // 2)


def _conv_back(d, cache, name, g, need_dx=True):
    dx, g[name + ".w"], g[name + ".b"] = conv2d_backward(d, cache, need_dx)
    return dx


def _norm(P, name, x, G):
    return groupnorm_forward(x, P[name + ".w"], P[name + ".b"], G, GN_EPS)


def _norm_back(d, cache, name, g):
    dx, g[name + ".w"], g[name + ".b"] = groupnorm_backward(d, cache)
    return dx


def resnet_forward(P, pre, x, G):
    """SD's ResnetBlock2D: x (N, C_in, H, W) -> x' + h (N, C_out, H, W), x' a 1x1 conv if C changes."""
    h, c_n1 = _norm(P, pre + "norm1", x, G)
    h, c_s1 = silu_forward(h)
    h, c_c1 = _conv(P, pre + "conv1", h)
    h, c_n2 = _norm(P, pre + "norm2", h, G)
    h, c_s2 = silu_forward(h)
    h, c_c2 = _conv(P, pre + "conv2", h)
    c_sc = None
    if pre + "conv_shortcut.w" in P:
        x, c_sc = _conv(P, pre + "conv_shortcut", x)
    return x + h, (pre, c_n1, c_s1, c_c1, c_n2, c_s2, c_c2, c_sc)


def resnet_backward(dout, cache, g):
    """dout (N, C_out, H, W) -> dx (N, C_in, H, W); parameter gradients go into g."""
    pre, c_n1, c_s1, c_c1, c_n2, c_s2, c_c2, c_sc = cache
    # h = conv2(silu(norm2(h)))
    dh = _conv_back(dout, c_c2, pre + "conv2", g)
    dh = silu_backward(dh, c_s2)
    dh = _norm_back(dh, c_n2, pre + "norm2", g)
    # h = conv1(silu(norm1(x)))
    dh = _conv_back(dh, c_c1, pre + "conv1", g)
    dh = silu_backward(dh, c_s1)
    dx = _norm_back(dh, c_n1, pre + "norm1", g)
    # out = shortcut(x) + h, shortcut the identity or a 1x1 conv
    dx += dout if c_sc is None else _conv_back(dout, c_sc, pre + "conv_shortcut", g)
    return dx


def plan_forward(P, plan, x, num_groups, keep_caches=True):
    """Run a plan: x -> out, caches (one per step; an empty list when not keep_caches, as for
    encoding and decoding without a backward, so that each step's cache is freed as it ends)."""
    caches = []
    for step in plan:
        kind = step[0]
        if kind == "conv":
            x, c = _conv(P, step[1], x, step[5])
        elif kind == "res":
            x, c = resnet_forward(P, step[1], x, num_groups)
        elif kind == "norm":
            x, c = _norm(P, step[1], x, num_groups)
        elif kind == "silu":
            x, c = silu_forward(x)
        else:  # "up"
            x, c = upsample2x_forward(x)
        if keep_caches:
            caches.append(c)
    return x, caches


def plan_backward(dout, caches, plan, need_dx=True):
    """Walk a plan backwards: dout -> dx (None if not need_dx), grads keyed like the parameters."""
    g = {}
    d = dout
    for i in range(len(plan) - 1, -1, -1):
        step, c = plan[i], caches[i]
        kind = step[0]
        if kind == "conv":  # x = conv(x); the very first conv of the plan may skip its dx
            d = _conv_back(d, c, step[1], g, need_dx or i > 0)
        elif kind == "res":  # x = resnet(x)
            d = resnet_backward(d, c, g)
        elif kind == "norm":  # x = groupnorm(x)
            d = _norm_back(d, c, step[1], g)
        elif kind == "silu":  # x = silu(x)
            d = silu_backward(d, c)
        else:  # x = upsample2x(x)
            d = upsample2x_backward(d, c)
    return d, g
