"""The DiT model (paper section 3.2): configurations, the official initialisation, and the
whole-model forward and hand-written backward over a flat parameter dict.

x (N, C, I, I) -> patch tokens + fixed position embedding -> L blocks conditioned on the
timestep and label embeddings -> final layer -> unpatchify -> (N, C_out, I, I), where C_out is
2C with learned variance (noise then variance channels) and C otherwise.

Its 320-odd lines stay one module: the parameter names that param_shapes defines are the ones
init_params fills, dit_forward reads and dit_backward returns, and they are read side by side.
"""
import functools
import math
from dataclasses import asdict, dataclass, fields

import numpy as np

from .backend import get_array_module, on_device_of, to_device
from .blocks import LN_EPS, get_design
from .layers import (check_labels, drop_labels, final_layer_backward, final_layer_forward, get_2d_sincos_pos_embed,
                     label_embed_backward, label_embed_forward, patch_embed_backward,
                     patch_embed_forward, timestep_embedder_backward, timestep_embedder_forward,
                     unpatchify_hwc_backward, unpatchify_hwc_forward)

FREQ_DIM = 256  # width of the sinusoidal timestep features (docs/paper.md §1.3)


@dataclass(frozen=True)
class DiTConfig:
    """The official DiT constructor's arguments, plus the block design of paper section 3.2."""
    input_size: int = 32
    patch_size: int = 2
    in_channels: int = 4
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    class_dropout_prob: float = 0.1
    num_classes: int = 1000
    learn_sigma: bool = True
    block: str = "adaLN-Zero"

    def __post_init__(self):
        for f in ("input_size", "patch_size", "in_channels", "hidden_size", "depth", "num_heads",
                  "num_classes"):
            v = getattr(self, f)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"DiTConfig.{f} must be a positive integer, got {v!r}")
        try:
            get_design(self.block)
        except ValueError as e:
            raise ValueError(f"DiTConfig.block: {e}") from None
        if self.hidden_size % self.num_heads:
            raise ValueError(f"DiTConfig.hidden_size={self.hidden_size} is not divisible by "
                             f"num_heads={self.num_heads}")
        if self.hidden_size % 4:
            raise ValueError(f"DiTConfig.hidden_size={self.hidden_size} must be divisible by 4 "
                             "for the 2-D sin-cos position embedding")
        if self.input_size % self.patch_size:
            raise ValueError(f"DiTConfig.input_size={self.input_size} is not divisible by "
                             f"patch_size={self.patch_size}")
        if not 0.0 <= self.class_dropout_prob < 1.0:
            raise ValueError(f"DiTConfig.class_dropout_prob must be in [0, 1), got {self.class_dropout_prob}")
        if self.mlp_ratio <= 0 or int(self.hidden_size * self.mlp_ratio) < 1:
            raise ValueError(f"DiTConfig.mlp_ratio must be positive, got {self.mlp_ratio}")

    @property
    def out_channels(self):
        return 2 * self.in_channels if self.learn_sigma else self.in_channels

    @property
    def grid_size(self):
        return self.input_size // self.patch_size

    @property
    def num_tokens(self):
        return self.grid_size ** 2

    @property
    def mlp_hidden(self):
        return int(self.hidden_size * self.mlp_ratio)  # as timm's Mlp

    @property
    def num_embeddings(self):
        """Rows of the label table: K, plus the null class when label dropout is used."""
        return self.num_classes + int(self.class_dropout_prob > 0)

    @property
    def design(self):
        """The BlockDesign record of self.block (minidit.blocks)."""
        return get_design(self.block)

    def replace(self, **kw):
        return DiTConfig(**{**asdict(self), **kw})

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"DiTConfig: unknown config key(s) {sorted(unknown)}")
        return cls(**d)


def _make(depth, hidden_size, patch_size, num_heads, **defaults):
    def build(**overrides):
        kw = dict(depth=depth, hidden_size=hidden_size, patch_size=patch_size, num_heads=num_heads)
        kw.update(defaults)
        kw.update(overrides)
        return DiTConfig(**kw)
    return build


# The twelve configurations of the paper (docs/paper.md §1.9): official defaults, latent 32x32x4, K=1000.
_PAPER_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
DiT_models = {f"DiT-{s}/{p}": _make(d, h, p, nh)
              for s, (d, h, nh) in _PAPER_SIZES.items() for p in (2, 4, 8)}

# Our own small teaching configurations (not in the paper): pixel space, 32x32 RGB, 10 classes
# (the built-in shapes data), sized to train on a laptop CPU in minutes.
_OUR_SIZES = {"Tiny": (4, 128, 4), "Small": (6, 192, 3)}
TEACHING_MODELS = {f"minidit-{s}/{p}": _make(d, h, p, nh, input_size=32, in_channels=3, num_classes=10)
                   for s, (d, h, nh) in _OUR_SIZES.items() for p in (2, 4, 8)}
DiT_models.update(TEACHING_MODELS)


def get_config(name, **overrides):
    """A config by name ("DiT-S/2", "minidit-Tiny/4", ...) with overrides; clear error if unknown."""
    if name not in DiT_models:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(DiT_models)}")
    return DiT_models[name](**overrides)


def param_shapes(cfg):
    """{key: shape} of every trainable parameter, keys following the official module paths."""
    D, C, p = cfg.hidden_size, cfg.in_channels, cfg.patch_size
    s = {"x_embedder.proj.w": (C * p * p, D), "x_embedder.proj.b": (D,),
         "t_embedder.mlp.0.w": (FREQ_DIM, D), "t_embedder.mlp.0.b": (D,),
         "t_embedder.mlp.2.w": (D, D), "t_embedder.mlp.2.b": (D,),
         "y_embedder.embedding_table.w": (cfg.num_embeddings, D)}
    block = cfg.design.param_shapes(D, cfg.mlp_hidden)
    for i in range(cfg.depth):
        s.update({f"blocks.{i}.{k}": shape for k, shape in block.items()})
    if cfg.design.adaptive_final:
        s.update({"final_layer.adaLN_modulation.1.w": (D, 2 * D), "final_layer.adaLN_modulation.1.b": (2 * D,)})
    s.update({"final_layer.linear.w": (D, p * p * cfg.out_channels),
              "final_layer.linear.b": (p * p * cfg.out_channels,)})
    return s


def init_params(cfg, seed=0, dtype=np.float32, device=None):
    """The official initialisation (docs/paper.md §1.8), for every block design.

    Every linear weight: xavier-uniform over the whole matrix, bias 0 (the patch embedding as a
    (C*p*p, D) linear too); label table and timestep-MLP weights: normal(0, 0.02); LayerNorm
    affine: gamma 1, beta 0; the keys the block design lists in `zero_init` (adaLN-Zero's block
    modulation layers), the final adaLN layer and the final linear layer: 0. The draws are
    NumPy's, so values differ from PyTorch's for one seed.
    """
    rng = np.random.default_rng(seed)
    P = {}
    for k, shape in param_shapes(cfg).items():
        if len(shape) == 1:
            v = np.ones(shape) if (".norm" in k and k.endswith(".w")) else np.zeros(shape)
        elif k == "y_embedder.embedding_table.w" or k.startswith("t_embedder.mlp."):
            v = rng.normal(0.0, 0.02, shape)
        else:
            bound = math.sqrt(6.0 / (shape[0] + shape[1]))
            v = rng.uniform(-bound, bound, shape)
        P[k] = v
    zero = {f"blocks.{i}.{k}" for i in range(cfg.depth) for k in cfg.design.zero_init}
    for k in P:
        if k.startswith("final_layer.") or k in zero:  # every design's decoder starts at zero
            P[k] = np.zeros_like(P[k])
    return {k: to_device(v.astype(dtype), device) for k, v in P.items()}


@functools.lru_cache(maxsize=32)
def _pos_embed_host(D, G):
    table = get_2d_sincos_pos_embed(D, G)
    table.flags.writeable = False
    return table


_POS_CACHE = {}


def pos_embed(cfg, xp=np, dtype=np.float32):
    """The fixed (T, D) position table, built once per (size, dtype, backend) and reused."""
    key = (cfg.hidden_size, cfg.grid_size, np.dtype(dtype).str, xp.__name__)
    if key not in _POS_CACHE:
        _POS_CACHE[key] = xp.asarray(_pos_embed_host(cfg.hidden_size, cfg.grid_size).astype(dtype))
    return _POS_CACHE[key]


def apply_label_dropout(y, cfg, rng, force_drop_ids=None):
    """Training-time label dropout (docs/paper.md §1.4): each label becomes the null class K with
    probability cfg.class_dropout_prob. Kept out of dit_forward so the forward is deterministic."""
    if cfg.class_dropout_prob <= 0 and force_drop_ids is None:
        return y
    return drop_labels(y, cfg.class_dropout_prob, cfg.num_classes, rng, force_drop_ids)


def _check_inputs(x, t, y, cfg):
    I, C = cfg.input_size, cfg.in_channels
    if x.ndim != 4 or tuple(x.shape[1:]) != (C, I, I):
        raise ValueError(f"dit_forward: x has shape {tuple(x.shape)}, expected (N, {C}, {I}, {I})")
    N = x.shape[0]
    if tuple(t.shape) != (N,) or tuple(y.shape) != (N,):
        raise ValueError(f"dit_forward: t {tuple(t.shape)} and y {tuple(y.shape)} must both be ({N},)")


# the final layer's parameters, in the order final_layer_forward takes them and its backward returns
_FINAL = ("final_layer.linear.w", "final_layer.linear.b", "final_layer.adaLN_modulation.1.w",
          "final_layer.adaLN_modulation.1.b")


def dit_forward(params, x, t, y, cfg, keep_cache=True):
    """x (N, C, I, I), t (N,) timesteps, y (N,) labels in [0, K] -> out (N, C_out, I, I), cache.

    keep_cache=False (forward only, as in sampling) lets each block's activations go as soon as
    the next block has run, instead of holding every block's until a backward; cache is None.
    """
    P, design = params, cfg.design
    xp = get_array_module(x)
    _check_inputs(x, t, y, cfg)
    check_labels(y, cfg.num_embeddings)  # host labels, for free, before they move
    t, y = on_device_of(x, t), on_device_of(x, y)  # t and y may come from the host (docs/gpu.md)
    h, c_x = patch_embed_forward(x, P["x_embedder.proj.w"], P["x_embedder.proj.b"], cfg.patch_size)
    h = h + pos_embed(cfg, xp, x.dtype)  # (N, T, D), fixed table, no gradient
    t_emb, c_t = timestep_embedder_forward(t, P["t_embedder.mlp.0.w"], P["t_embedder.mlp.0.b"],
                                           P["t_embedder.mlp.2.w"], P["t_embedder.mlp.2.b"], FREQ_DIM)
    y_emb, c_y = label_embed_forward(y, P["y_embedder.embedding_table.w"])
    c = t_emb + y_emb  # (N, D): a sum, not a concatenation (docs/paper.md §1.4), for the final layer
    h, cond = design.condition(h, t_emb, y_emb)  # what the blocks see of t and y (blocks.py)
    c_blocks = []
    for i in range(cfg.depth):  # the only Python loop of the model: over blocks
        h, cb = design.forward(P, f"blocks.{i}.", h, cond, cfg.num_heads)
        if keep_cache:
            c_blocks.append(cb)
    h = h[:, :cfg.num_tokens]  # the image tokens (in-context appended two more)
    n_final = 4 if design.adaptive_final else 2  # a plain final layer has no adaLN weights
    tok, c_final = final_layer_forward(h, c, *(P[k] for k in _FINAL[:n_final]), eps=LN_EPS)
    out, c_un = unpatchify_hwc_forward(tok, cfg.patch_size, cfg.out_channels, cfg.input_size, cfg.input_size)
    if not keep_cache:
        return out, None
    return out, dict(cfg=cfg, c_x=c_x, c_t=c_t, c_y=c_y, c_blocks=c_blocks, c_final=c_final, c_un=c_un)


def dit_backward(dout, cache, need_dx=True, release=False, sink=None):
    """dout (N, C_out, I, I) -> dx (N, C, I, I) or None, grads keyed like params.

    Training needs no gradient for the input image: need_dx=False skips that product.
    release=True drops each block's cache as soon as its backward is done, so the activations
    are freed while the gradients grow (training does this; the cache is then used up).
    sink: a function to hand each group of finished gradients to (a dict: the final layer's,
    then each block's from the last to the first, then the embedders'), as soon as the
    backward has it; the returned grads are then empty. Data-parallel training uses it to sum
    the workers' gradients while the backward still runs (minidit.training.parallel.GradientSum).
    """
    cfg = cache["cfg"]
    design = cfg.design
    xp = get_array_module(dout)
    g = {}

    def hand_over(group):
        if sink is None:
            g.update(group)
        else:
            sink(group)

    # out = unpatchify(tok)
    dtok = unpatchify_hwc_backward(dout, cache["c_un"])
    # tok = final_layer(h, c)
    dh, dc, *gf = final_layer_backward(dtok, cache["c_final"])
    hand_over({k: v for k, v in zip(_FINAL, gf) if v is not None})
    if design.extra_tokens:
        # h = h_all[:, :T]: the conditioning tokens get no gradient from the decoder
        N, T, D = dh.shape
        dh = xp.concatenate([dh, xp.zeros((N, design.extra_tokens, D), dtype=dh.dtype)], axis=1)
    dh, dcond = blocks_backward(dh, cache["c_blocks"], design, hand_over, release)
    # h_all, cond = condition(h, t_emb, y_emb)
    dh, dt_emb, dy_emb = design.condition_backward(dh, dcond)
    if dc is not None:
        # c = t_emb + y_emb feeds the adaptive final layer too
        dt_emb, dy_emb = dc + dt_emb, dc + dy_emb
    ge = {}
    (ge["t_embedder.mlp.0.w"], ge["t_embedder.mlp.0.b"], ge["t_embedder.mlp.2.w"],
     ge["t_embedder.mlp.2.b"]) = timestep_embedder_backward(dt_emb, cache["c_t"])
    ge["y_embedder.embedding_table.w"] = label_embed_backward(dy_emb, cache["c_y"])
    # h = patch_embed(x) + pos_embed
    dx, ge["x_embedder.proj.w"], ge["x_embedder.proj.b"] = patch_embed_backward(dh, cache["c_x"], need_dx)
    hand_over(ge)
    return dx, g


# exercise: 3.2 DiT block design
def blocks_backward(dh, c_blocks, design, hand_over, release=False):
    """The backward through the stack of blocks: dh (N, T', D) -> (dh (N, T', D), dcond).

    c_blocks: the caches of blocks 0..depth-1, as dit_forward kept them; design: the BlockDesign
    (design.backward(dout, cache) -> (dx, dcond_block, grads)). The blocks are undone from the
    last to the first. The conditioning `cond` feeds every block, so its gradient dcond is the
    SUM of the blocks' dcond_block (None when the design gives None for every block). Each
    block's grads dict is passed to hand_over(grads) as soon as that block is done, last block
    first. release=True sets c_blocks[i] = None once block i is done (frees its activations).
    """
    # cond feeds every block: its gradient is the sum over all of them, accumulated here,
    # block by block, in reverse order
    dcond = None
    for i in reversed(range(len(c_blocks))):
        dh, dcb, gb = design.backward(dh, c_blocks[i])
        if release:
            c_blocks[i] = None
        hand_over(gb)
        if dcb is not None:
            dcond = dcb if dcond is None else dcond + dcb
    return dh, dcond


def dit_apply(params, x, t, y, cfg):
    """Forward only, without keeping a cache for the backward (sampling)."""
    return dit_forward(params, x, t, y, cfg, keep_cache=False)[0]
