"""Conversion between minidit parameters and the official PyTorch DiT state_dict (as NumPy
arrays under the official key names and shapes), so released DiT weights run in minidit.

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
    fit the config. The stored pos_embed is compared with the table rebuilt from the config.
    """
    shapes = param_shapes(cfg)
    D, C, p = cfg.hidden_size, cfg.in_channels, cfg.patch_size
    expected = {_official_key(k) for k in shapes} | {"pos_embed"}
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
        params[k] = np.ascontiguousarray(v, dtype=dtype)
    if check_pos_embed:
        pe = np.asarray(to_numpy(sd["pos_embed"]), dtype=np.float64).reshape(-1, D)
        ref = np.asarray(pos_embed(cfg, np, np.float32), dtype=np.float64)
        if pe.shape != ref.shape or np.abs(pe - ref).max() > 1e-5:
            raise ValueError("from_official: pos_embed does not match the sin-cos table of this "
                             "config (wrong input_size, patch_size or hidden_size?)")
    return params


# minidit's own training checkpoints ------------------------------------------------------------
# One .npz per checkpoint: arrays under "group/key" names plus a JSON "meta" entry. Written to a
# temporary file in the same folder, flushed to disk and then renamed over the target, so a
# crash mid-write never leaves a broken checkpoint behind.

FORMAT = "minidit-checkpoint"
VERSION = 1


def save_checkpoint(path, meta, **groups):
    """Atomically write `groups` (name -> dict of arrays) and `meta` (JSON-able dict) to path."""
    import json
    import os
    import tempfile
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"meta": np.array(json.dumps({"format": FORMAT, "version": VERSION, **meta}))}
    for g, d in groups.items():
        for k, v in d.items():
            arrays[f"{g}/{k}"] = np.asarray(to_numpy(v))
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a checkpoint is an ordinary file
        os.replace(tmp, path)  # atomic on POSIX and Windows
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def load_checkpoint(path):
    """Read a checkpoint written by save_checkpoint -> (meta, {group: {key: array}}).

    A file that is not a minidit checkpoint raises ValueError with a hint.
    """
    import json
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        z = np.load(path, allow_pickle=False)
        if not hasattr(z, "files"):  # a plain .npy array, not an archive
            raise ValueError(f"{path} is not a minidit checkpoint (a single array, not an .npz "
                             "archive); train with `python -m minidit.train` to make one")
        with z:
            if "meta" not in z.files:
                raise ValueError(f"{path} is not a minidit checkpoint (no 'meta' entry). Official "
                                 "PyTorch DiT weights: read them into NumPy and use "
                                 "minidit.checkpoint.from_official(state_dict, cfg)")
            meta = json.loads(str(z["meta"]))
            groups = {}
            for name in z.files:
                if name != "meta":
                    g, k = name.split("/", 1)
                    groups.setdefault(g, {})[k] = z[name]
    except (OSError, EOFError, ValueError) as e:
        if isinstance(e, ValueError) and "minidit" in str(e):
            raise
        raise ValueError(f"{path} is not a readable minidit checkpoint ({e}); train with "
                         "`python -m minidit.train` to make one") from e
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a minidit checkpoint (format {meta.get('format')!r})")
    return meta, groups


def slim_checkpoint(src, dst, dtype=np.float16):
    """Copy a training checkpoint without its optimiser and data-stream state, with the model
    and EMA weights stored in `dtype` (float16 halves the file): a small file to share or ship.
    Loading it (minidit.sample.load_model) casts the weights back to float32."""
    meta, groups = load_checkpoint(src)
    meta = {k: v for k, v in meta.items() if k not in ("format", "version", "rng", "loader", "opt_step")}
    meta["slim"] = {"from": str(src), "dtype": np.dtype(dtype).name}
    keep = {g: {k: v.astype(dtype) for k, v in groups[g].items()} for g in ("model", "ema") if g in groups}
    return save_checkpoint(dst, meta, **keep)
