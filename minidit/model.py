"""The DiT model (paper section 3.2): configurations, the official initialisation, and the
whole-model forward and hand-written backward over a flat parameter dict.

x (N, C, I, I) -> patch tokens + fixed position embedding -> L blocks conditioned on the
timestep and label embeddings -> final layer -> unpatchify -> (N, C_out, I, I), where C_out is
2C with learned variance (noise then variance channels) and C otherwise.
"""
import functools
import math
from dataclasses import asdict, dataclass, fields

import numpy as np

from .backend import get_array_module, to_device
from .blocks import (BLOCK_DESIGNS, block_backward, block_forward, final_layer_backward,
                     final_layer_forward)
from .layers import (drop_labels, get_2d_sincos_pos_embed, label_embed_backward,
                     label_embed_forward, patch_embed_backward, patch_embed_forward,
                     timestep_embedder_backward, timestep_embedder_forward, unpatchify_backward,
                     unpatchify_forward)

FREQ_DIM = 256  # width of the sinusoidal timestep features (PAPER.md 1.3)


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
        if self.block not in BLOCK_DESIGNS:
            raise ValueError(f"DiTConfig.block: unknown block design {self.block!r}; "
                             f"choose one of {BLOCK_DESIGNS}")
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
    def adaptive_final(self):
        return self.block in ("adaLN", "adaLN-Zero")

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


# The twelve configurations of the paper (PAPER.md 1.9): official defaults, latent 32x32x4, K=1000.
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
    D, C, p, H = cfg.hidden_size, cfg.in_channels, cfg.patch_size, cfg.mlp_hidden
    s = {"x_embedder.proj.w": (C * p * p, D), "x_embedder.proj.b": (D,),
         "t_embedder.mlp.0.w": (FREQ_DIM, D), "t_embedder.mlp.0.b": (D,),
         "t_embedder.mlp.2.w": (D, D), "t_embedder.mlp.2.b": (D,),
         "y_embedder.embedding_table.w": (cfg.num_embeddings, D)}

    def lin(name, din, dout):
        s[name + ".w"], s[name + ".b"] = (din, dout), (dout,)

    for i in range(cfg.depth):
        pre = f"blocks.{i}."
        if cfg.block in ("in-context", "cross-attention"):
            lin(pre + "norm1", 1, D), lin(pre + "norm2", 1, D)
        lin(pre + "attn.qkv", D, 3 * D), lin(pre + "attn.proj", D, D)
        if cfg.block == "cross-attention":
            for n in ("q", "k", "v", "proj"):
                lin(pre + "cross_attn." + n, D, D)
            lin(pre + "norm3", 1, D)
        lin(pre + "mlp.fc1", D, H), lin(pre + "mlp.fc2", H, D)
        if cfg.block == "adaLN-Zero":
            lin(pre + "adaLN_modulation.1", D, 6 * D)
        elif cfg.block == "adaLN":
            lin(pre + "adaLN_modulation.1", D, 4 * D)
    for k in [k for k in s if ".norm" in k and k.endswith(".w")]:
        s[k] = (D,)  # LayerNorm affine: gamma (D,), beta (D,)
    if cfg.adaptive_final:
        lin("final_layer.adaLN_modulation.1", D, 2 * D)
    lin("final_layer.linear", D, p * p * cfg.out_channels)
    return s


def init_params(cfg, seed=0, dtype=np.float32, device=None):
    """The official initialisation (PAPER.md 1.8), for every block design.

    Every linear weight: xavier-uniform over the whole matrix, bias 0 (the patch embedding as a
    (C*p*p, D) linear too); label table and timestep-MLP weights: normal(0, 0.02); LayerNorm
    affine: gamma 1, beta 0; adaLN-Zero's block modulation layers, the final adaLN layer and the
    final linear layer: 0. The draws are NumPy's, so values differ from PyTorch's for one seed.
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
    for k in P:
        zero = k.startswith("final_layer.") or (cfg.block == "adaLN-Zero" and ".adaLN_modulation." in k)
        if zero:
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
    """Training-time label dropout (PAPER.md 1.4): each label becomes the null class K with
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


def dit_forward(params, x, t, y, cfg, keep_cache=True):
    """x (N, C, I, I), t (N,) timesteps, y (N,) labels in [0, K] -> out (N, C_out, I, I), cache.

    keep_cache=False (forward only, as in sampling) lets each block's activations go as soon as
    the next block has run, instead of holding every block's until a backward; cache is None.
    """
    P = params
    xp = get_array_module(x)
    _check_inputs(x, t, y, cfg)
    nh = cfg.num_heads
    h, c_x = patch_embed_forward(x, P["x_embedder.proj.w"], P["x_embedder.proj.b"], cfg.patch_size)
    h = h + pos_embed(cfg, xp, x.dtype)  # (N, T, D), fixed table, no gradient
    t_emb, c_t = timestep_embedder_forward(t, P["t_embedder.mlp.0.w"], P["t_embedder.mlp.0.b"],
                                           P["t_embedder.mlp.2.w"], P["t_embedder.mlp.2.b"], FREQ_DIM)
    y_emb, c_y = label_embed_forward(y, P["y_embedder.embedding_table.w"])
    c = t_emb + y_emb  # (N, D): a sum, not a concatenation (PAPER.md 1.4)
    if cfg.block == "in-context":
        h = xp.concatenate([h, t_emb[:, None], y_emb[:, None]], axis=1)  # (N, T + 2, D)
        cond = None
    elif cfg.block == "cross-attention":
        cond = xp.stack([t_emb, y_emb], axis=1)  # (N, 2, D)
    else:
        cond = c
    c_blocks = []
    for i in range(cfg.depth):  # the only Python loop of the model: over blocks
        h, cb = block_forward(cfg.block, P, f"blocks.{i}.", h, cond, nh)
        if keep_cache:
            c_blocks.append(cb)
    if cfg.block == "in-context":
        h = h[:, :-2]  # drop the two conditioning tokens
    tok, c_final = final_layer_forward(P, h, c, cfg.adaptive_final)
    out, c_un = unpatchify_forward(tok, cfg.patch_size, cfg.out_channels, cfg.input_size, cfg.input_size)
    if not keep_cache:
        return out, None
    return out, dict(cfg=cfg, c_x=c_x, c_t=c_t, c_y=c_y, c_blocks=c_blocks, c_final=c_final, c_un=c_un)


def dit_backward(dout, cache, need_dx=True, release=False, sink=None):
    """dout (N, C_out, I, I) -> (grads keyed like params, dx (N, C, I, I) or None).

    Training needs no gradient for the input image: need_dx=False skips that product.
    release=True drops each block's cache as soon as its backward is done, so the activations
    are freed while the gradients grow (training does this; the cache is then used up).
    sink: a function to hand each group of finished gradients to (a dict: the final layer's,
    then each block's from the last to the first, then the embedders'), as soon as the
    backward has it; the returned grads are then empty. Data-parallel training uses it to sum
    the workers' gradients while the backward still runs (minidit.train).
    """
    cfg = cache["cfg"]
    xp = get_array_module(dout)
    g = {}

    def hand_over(group):
        if sink is None:
            g.update(group)
        else:
            sink(group)

    # out = unpatchify(tok)
    dtok = unpatchify_backward(dout, cache["c_un"])
    # tok = final_layer(h, c)
    dh, dc, gf = final_layer_backward(dtok, cache["c_final"])
    hand_over(gf)
    if cfg.block == "in-context":
        # h = h_full[:, :-2]: the conditioning tokens get no gradient from the decoder
        N, T, D = dh.shape
        dh = xp.concatenate([dh, xp.zeros((N, 2, D), dtype=dh.dtype)], axis=1)
    # c feeds every block (and the final layer): its gradient is the sum over all of them,
    # accumulated here, block by block, in reverse order
    dcond = None
    for i in reversed(range(cfg.depth)):
        dh, dcb, gb = block_backward(cfg.block, dh, cache["c_blocks"][i])
        if release:
            cache["c_blocks"][i] = None
        hand_over(gb)
        if dcb is not None:
            dcond = dcb if dcond is None else dcond + dcb
    if cfg.block == "in-context":
        # h_full = concat([h, t_emb, y_emb], tokens)
        dt_emb, dy_emb, dh = dh[:, -2], dh[:, -1], dh[:, :-2]
    elif cfg.block == "cross-attention":
        # cond = stack([t_emb, y_emb], axis=1)
        dt_emb, dy_emb = dcond[:, 0], dcond[:, 1]
    else:
        dc = dc + dcond  # the final layer's share plus every block's
    if cfg.block in ("adaLN", "adaLN-Zero"):
        # c = t_emb + y_emb
        dt_emb = dy_emb = dc
    ge = {}
    (ge["t_embedder.mlp.0.w"], ge["t_embedder.mlp.0.b"], ge["t_embedder.mlp.2.w"],
     ge["t_embedder.mlp.2.b"]) = timestep_embedder_backward(dt_emb, cache["c_t"])
    ge["y_embedder.embedding_table.w"] = label_embed_backward(dy_emb, cache["c_y"])
    # h = patch_embed(x) + pos_embed
    dx, ge["x_embedder.proj.w"], ge["x_embedder.proj.b"] = patch_embed_backward(dh, cache["c_x"], need_dx)
    hand_over(ge)
    return g, dx


def dit_apply(params, x, t, y, cfg):
    """Forward only, without keeping a cache for the backward (sampling)."""
    return dit_forward(params, x, t, y, cfg, keep_cache=False)[0]


def forward_with_cfg(params, x, t, y, cfg_scale, cfg, guidance="all"):
    """Classifier-free guidance on a doubled batch, as the official `forward_with_cfg`.

    x = [z; z], t duplicated, y = [labels; K...K] (2n rows). The first half of x is run twice in
    one batched forward, and eps_hat = eps_u + s (eps_c - eps_u) is written to both halves.
    guidance="all": every noise channel is guided (the paper's equation; our default).
    guidance="official": only channels 0..2 are guided and channel 3 plus the variance channels
    pass through unguided, exactly as the released code (PAPER.md 1.7). For 3-channel (RGB)
    models the two coincide on the noise channels.
    Returns (2n, C_out, I, I).
    """
    xp = get_array_module(x)
    half = x[: x.shape[0] // 2]
    out = dit_apply(params, xp.concatenate([half, half], axis=0), t, y, cfg)
    C = cfg.in_channels
    if guidance == "all":
        n_guided = C
    elif guidance == "official":
        n_guided = 3
    elif isinstance(guidance, int) and 0 < guidance <= C:
        n_guided = guidance
    else:
        raise ValueError(f"forward_with_cfg: guidance must be 'all', 'official' or 1..{C}, got {guidance!r}")
    eps, rest = out[:, :n_guided], out[:, n_guided:]
    cond_eps, uncond_eps = xp.split(eps, 2, axis=0)
    half_eps = uncond_eps + cfg_scale * (cond_eps - uncond_eps)
    eps = xp.concatenate([half_eps, half_eps], axis=0)
    return xp.concatenate([eps, rest], axis=1)


def make_model_fn(params, cfg, y, cfg_scale=1.0, guidance="all"):
    """A sampler-ready function model_fn(x, t) -> (N, C_out, I, I) for class labels y (N,).

    With cfg_scale > 1 it runs guidance: the batch is doubled with the null class K and the
    guided first half is returned. With cfg_scale == 1 it is the plain conditional forward.
    """
    if cfg_scale < 1:
        raise ValueError(f"guidance scale must be >= 1, got {cfg_scale}")
    if cfg_scale > 1 and cfg.class_dropout_prob <= 0:
        raise ValueError("classifier-free guidance needs a model trained with label dropout "
                         "(class_dropout_prob > 0): it has no null class")

    def model_fn(x, t):
        xp = get_array_module(x)
        if cfg_scale == 1:
            return dit_apply(params, x, t, y, cfg)
        null = xp.full_like(y, cfg.num_classes)
        out = forward_with_cfg(params, xp.concatenate([x, x]), xp.concatenate([t, t]),
                               xp.concatenate([y, null]), cfg_scale, cfg, guidance)
        return out[: x.shape[0]]

    return model_fn
