"""One entry point for the weight files users download (docs/paper.md §6.1), none of which needs PyTorch:

- a PyTorch zip-pickle (`.pt`, `.pth`, `.bin`): minidit.pretrained.torchfile, memory-mapped;
- a `.safetensors` file: read with `safetensors.numpy` (a header of names, dtypes and offsets,
  then raw bytes: no code in the file at all, which is why the format exists);
- a diffusers folder: its `diffusion_pytorch_model.safetensors` (preferred) or `.bin`, and its
  `config.json`.
"""
import json
from pathlib import Path

import numpy as np

from .torchfile import load_torch_file

WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                "model.safetensors", "pytorch_model.bin")


def _load_safetensors(path):
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable .safetensors file ({e}): a truncated download?") from None


def weight_file(path, sub=None):
    """The weight file a path names: the file itself, or the weights inside a diffusers folder
    (looking in `path/sub/` first when sub is given, e.g. "transformer" or "vae")."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    for folder in ([path / sub] if sub else []) + [path]:
        for name in WEIGHT_NAMES:
            if (folder / name).is_file():
                return folder / name
    raise FileNotFoundError(f"{path}: no weight file ({', '.join(WEIGHT_NAMES)}) in it"
                            f"{f' or in {path / sub}' if sub else ''}")


def read_config(weights_path):
    """The config.json beside a weight file, as a dict, or None when there is none."""
    cfg = Path(weights_path).parent / "config.json"
    if not cfg.is_file():
        return None
    try:
        return json.loads(cfg.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg}: not valid JSON ({e})") from None


def read_state_dict(path):
    """{name: NumPy array} from a .safetensors file or a PyTorch zip-pickle (memory-mapped).

    A training checkpoint of the official train.py ({"model", "ema", "opt", "args"}) gives its
    "ema" weights, as the official find_model does.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    obj = load_torch_file(path)
    if isinstance(obj, dict) and "ema" in obj and isinstance(obj["ema"], dict):
        obj = obj["ema"]
    elif isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, np.ndarray) for v in obj.values()):
        raise ValueError(f"{path}: holds a {type(obj).__name__}, not a state_dict of tensors")
    return dict(obj)
