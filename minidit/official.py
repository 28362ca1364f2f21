"""Conversion between minidit parameters and the official PyTorch DiT state_dict (as NumPy
arrays under the official key names and shapes; docs/paper.md §1 and §6.1), so released DiT weights
run in minidit. One function each way.

Our linear weights are (D_in, D_out) and used as x @ w; PyTorch stores (D_out, D_in). The patch
embedding is a (C*p*p, D) linear for us and a (D, C, p, p) conv kernel officially. The fixed
`pos_embed` (1, T, D) is an official buffer-like parameter; we rebuild it from the config.
"""
import numpy as np

from .backend import to_numpy
from .model import param_shapes, pos_embed

_EMBED = "y_embedder.embedding_table.w"
_PATCH = "x_embedder.proj.w"


def _official_key(k):
    return k[:-2] + (".weight" if k.endswith(".w") else ".bias")


def to_official(params, cfg):
    """minidit params -> {official key: float32 NumPy array in the official shape}."""
    shapes = param_shapes(cfg)
    missing = sorted(set(shapes) - set(params))
    if missing:
        raise ValueError(f"to_official: parameters missing for this config: {missing[:5]}")
    sd = {}
    D, C, p = cfg.hidden_size, cfg.in_channels, cfg.patch_size
    for k in shapes:
        v = np.asarray(to_numpy(params[k]))
        if k == _PATCH:
            v = v.T.reshape(D, C, p, p)  # (C*p*p, D) -> conv kernel (D, C, p, p)
        elif v.ndim == 2 and k != _EMBED:
            v = v.T  # linear: (D_in, D_out) -> (D_out, D_in)
        sd[_official_key(k)] = np.ascontiguousarray(v, dtype=np.float32)
    sd["pos_embed"] = np.asarray(pos_embed(cfg, np, np.float32))[None].copy()  # (1, T, D)
    return sd


def from_official(state_dict, cfg, dtype=np.float32, check_pos_embed=True):
    """Official state_dict (NumPy arrays) -> minidit params for `cfg`.

    Raises ValueError naming the key for a missing or unexpected key or a shape that does not
    fit the config. The stored pos_embed is compared with the table rebuilt from the config;
    with check_pos_embed=False it is neither needed nor read (diffusers files do not store it).
    """
    shapes = param_shapes(cfg)
    D, C, p = cfg.hidden_size, cfg.in_channels, cfg.patch_size
    expected = {_official_key(k) for k in shapes} | {"pos_embed"}
    if not check_pos_embed:  # the fixed table is rebuilt from the config: a file may omit it
        expected.discard("pos_embed")
        state_dict = {k: v for k, v in state_dict.items() if k not in ("pos_embed", "module.pos_embed")}
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state_dict.items()}
    missing, unexpected = sorted(expected - set(sd)), sorted(set(sd) - expected)
    if missing or unexpected:
        raise ValueError(f"from_official: state_dict does not fit {cfg.block} DiT "
                         f"(depth {cfg.depth}, hidden {cfg.hidden_size}): missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    params = {}
    for k, shape in shapes.items():
        ok = _official_key(k)
        v = np.asarray(to_numpy(sd[ok]))
        if k == _PATCH:
            want = (D, C, p, p)
        elif len(shape) == 2 and k != _EMBED:
            want = shape[::-1]
        else:
            want = shape
        if tuple(v.shape) != tuple(want):
            raise ValueError(f"from_official: {ok} has shape {tuple(v.shape)}, expected {want}")
        if k == _PATCH:
            v = v.reshape(D, C * p * p).T
        elif len(shape) == 2 and k != _EMBED:
            v = v.T
        params[k] = np.array(v, dtype=dtype, order="C")  # always a copy: writable, and no view of a mapped file
    if check_pos_embed:
        pe = np.asarray(to_numpy(sd["pos_embed"]), dtype=np.float64).reshape(-1, D)
        ref = np.asarray(pos_embed(cfg, np, np.float32), dtype=np.float64)
        if pe.shape != ref.shape or np.abs(pe - ref).max() > 1e-5:
            raise ValueError("from_official: pos_embed does not match the sin-cos table of this "
                             "config (wrong input_size, patch_size or hidden_size?)")
    return params
