"""minidit's checkpoint format, and finding and loading what the commands were given.

One .npz per checkpoint: arrays under "group/key" names ("model/blocks.0.attn.qkv.w", "ema/...",
"opt_m/...") plus a JSON "meta" entry (what was trained, its config, the step, the random and
data-stream state). Every file minidit trains is one: DiT runs, the VAE and the evaluation
classifier. A write goes to a temporary file in the same folder, is flushed to disk and then
renamed over the target, so a crash mid-write never leaves a broken checkpoint behind. The
official PyTorch weights are converted by minidit.official instead.
"""
import json
import os
import zipfile
from pathlib import Path

import numpy as np

from ..backend import get_array_module, to_device, to_numpy
from ..cli import atomic_write
from ..model import DiTConfig, param_shapes

FORMAT = "minidit-checkpoint"
VERSION = 1
# The small models shipped with minidit: data/ of a source checkout, minidit/shipped/ once
# installed with `pip install .` (pyproject.toml maps the one onto the other).
SHIPPED_DIRS = (Path(__file__).resolve().parents[1] / "shipped",
                Path(__file__).resolve().parents[2] / "data")


def shipped_file(name, must_exist=True):
    """The path of a file shipped with minidit, by its file name ("minidit_shapes32.npz").
    must_exist=False gives the path it would have in a checkout instead of raising. What a
    user types goes through resolve_input instead, where a path with a folder is that path."""
    name = Path(name).name
    for folder in SHIPPED_DIRS:
        if (folder / name).is_file():
            return folder / name
    if not must_exist:
        return SHIPPED_DIRS[-1] / name
    raise FileNotFoundError(f"{name} is not among the files shipped with minidit "
                            f"(looked in {', '.join(str(d) for d in SHIPPED_DIRS)})")


def non_finite(groups):
    """The first "group/key" whose array holds a NaN or an infinity, or None."""
    for g, arrays in groups.items():
        for k, a in arrays.items():
            xp = get_array_module(a)
            if xp.asarray(a).dtype.kind == "f" and not bool(xp.isfinite(a).all()):
                return f"{g}/{k}"
    return None


def save_checkpoint(path, meta, **groups):
    """Atomically write `groups` (name -> dict of arrays) and `meta` (JSON-able dict) to path:
    the bytes go to a temporary file beside it, are flushed to the disk and then renamed over
    it, so a crash or a full disk mid-write leaves the previous file as it was."""
    path = Path(path)
    arrays = {"meta": np.array(json.dumps({"format": FORMAT, "version": VERSION, **meta}))}
    for g, d in groups.items():
        for k, v in d.items():
            arrays[f"{g}/{k}"] = np.asarray(to_numpy(v))
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
    return path


def load_checkpoint(path):
    """Read a checkpoint written by save_checkpoint -> (meta, {group: {key: array}}).

    A file that is not a minidit checkpoint raises ValueError with a hint.
    """
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
                                 "minidit.official.from_official(state_dict, cfg)")
            meta = json.loads(str(z["meta"]))
            if not isinstance(meta, dict):
                raise ValueError(f"{path} is not a minidit checkpoint (its meta is a JSON "
                                 f"{type(meta).__name__}, not an object)")
            groups = {}
            for name in z.files:
                if name != "meta":
                    if "/" not in name:
                        raise ValueError(f"{path} is not a minidit checkpoint (the array {name!r} "
                                         "belongs to no group)")
                    g, k = name.split("/", 1)
                    groups.setdefault(g, {})[k] = z[name]
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
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
    Loading it (load_model) casts the weights back to float32."""
    meta, groups = load_checkpoint(src)
    meta = {k: v for k, v in meta.items() if k not in ("format", "version", "rng", "loader", "opt_step")}
    meta["slim"] = {"from": str(src), "dtype": np.dtype(dtype).name}
    keep = {g: {k: v.astype(dtype) for k, v in groups[g].items()} for g in ("model", "ema") if g in groups}
    return save_checkpoint(dst, meta, **keep)


def checkpoints_of(run_dir):
    """The checkpoints of a run directory, oldest first."""
    return sorted((Path(run_dir) / "checkpoints").glob("step_*.npz"))


def resolve_input(path, what="checkpoint"):
    """What a user typed for an input file: the path itself when it exists; a bare name (no
    folder in it) that does not exist here may name a file shipped with minidit. A path with a
    folder in it never falls back to a shipped file (a typo in the folder must not silently
    sample the shipped model). Returns an absolute path, so the file stays the same one when
    the working directory changes; FileNotFoundError otherwise."""
    p = Path(path)
    if p.exists():
        return p.absolute()
    if not p.is_absolute() and len(p.parts) == 1:
        try:
            return shipped_file(p)
        except FileNotFoundError:
            pass
    hint = ""
    if len(p.parts) > 1 and shipped_file(p.name, must_exist=False).is_file():
        hint = f" (to use the file shipped with minidit, give its name alone: {p.name})"
    raise FileNotFoundError(f"{what} {p} does not exist{hint}")


def find_checkpoint(path):
    """A checkpoint file, the newest checkpoint of a run directory, or a shipped file named by
    its file name alone (minidit_shapes32.npz works from any working directory; a path with a
    folder in it, like data/minidit_shapes32.npz, is that path)."""
    p = Path(path)
    if p.is_dir():
        cands = checkpoints_of(p) or sorted(p.glob("step_*.npz"))
        if not cands:
            raise FileNotFoundError(f"{p} holds no checkpoint (expected {p}/checkpoints/step_*.npz)")
        return cands[-1]
    return resolve_input(p)


def find_vae(recorded, ckpt):
    """The VAE file a latent checkpoint records (not one a user typed): as recorded if it
    exists, else looked up by its file name beside the checkpoint and among the shipped files
    (so the shipped model, which records data/vae_shapes32.npz, samples from any working
    directory, and a run folder moved elsewhere with its VAE still finds it)."""
    p = Path(recorded)
    if p.exists():
        return p
    if (Path(ckpt).resolve().parent / p).exists():
        return Path(ckpt).resolve().parent / p
    if (Path(ckpt).resolve().parent / p.name).exists():
        return Path(ckpt).resolve().parent / p.name
    try:
        return shipped_file(p.name)
    except FileNotFoundError:
        return p  # load_vae names the missing file


def load_model(path, use_ema=True, device=None):
    """(params, cfg, meta) of the DiT in a checkpoint or run directory; the EMA weights unless
    use_ema=False, as float32 on `device`."""
    meta, groups = load_checkpoint(find_checkpoint(path))
    if meta.get("kind", "dit") != "dit" or not isinstance(meta.get("config"), dict) or "model" not in groups:
        raise ValueError(f"{path} is a minidit checkpoint but holds no DiT model (kind "
                         f"{meta.get('kind')!r}; a VAE is passed with --vae)")
    cfg = DiTConfig.from_dict(meta["config"])
    which = "ema" if use_ema and "ema" in groups else "model"
    check_weights(path, groups[which], param_shapes(cfg))
    names = meta.get("class_names")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)
                                  and len(names) == cfg.num_classes):
        raise ValueError(f"{path}: the meta's class_names must be a list of {cfg.num_classes} names, got "
                         f"{str(names)[:40]}")
    weights = {k: v.astype(np.float32) for k, v in groups[which].items()}  # slim files store float16
    bad = non_finite({which: weights})
    if bad is not None:
        raise ValueError(f"{path}: the weights are not finite ({bad}); they would sample noise")
    return to_device(weights, device), cfg, meta


def check_weights(path, weights, shapes):
    """ValueError naming the first weight that is missing, of another shape, or not stored as
    floating-point numbers (an array of strings would turn into NaNs)."""
    for k, shape in shapes.items():
        if k not in weights:
            raise ValueError(f"{path} is missing the weight {k!r} (a checkpoint of another version or model?)")
        a = weights[k]
        if a.dtype.kind != "f":
            raise ValueError(f"{path}: the weight {k!r} is stored as {a.dtype}, not as floating-point numbers")
        if tuple(a.shape) != tuple(shape):
            raise ValueError(f"{path}: the weight {k!r} has shape {tuple(a.shape)}, the config needs {tuple(shape)}")
