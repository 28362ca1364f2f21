"""The paper's released DiT weights as minidit parameters (docs/paper.md §6.1, §6.2).

Two layouts reach the same official state_dict, which minidit.official.from_official maps into
our parameters:
- the official `DiT-XL-2-256x256.pt` / `DiT-XL-2-512x512.pt` (a state_dict under the official
  names), or a checkpoint of the official train.py (its "ema" weights);
- a diffusers `DiTTransformer2DModel` folder (`transformer/` with config.json), whose names are
  mapped back to the official ones here. The weights are the same numbers; only diffusers' math
  differs (its timestep frequencies and one LayerNorm eps, docs/paper.md §6.2), and minidit runs them
  with the official math, which is what they were trained with.
"""
import re

import numpy as np

from ..model import DiT_models, DiTConfig
from ..official import from_official
from .weights import read_config, read_state_dict, weight_file

_D_BLOCK = re.compile(r"transformer_blocks\.(\d+)\.(.+)")
_BLOCK_NAMES = {"norm1.linear": "adaLN_modulation.1", "attn1.to_out.0": "attn.proj",
                "ff.net.0.proj": "mlp.fc1", "ff.net.2": "mlp.fc2"}
_TOP_NAMES = {"pos_embed.proj": "x_embedder.proj", "proj_out_1": "final_layer.adaLN_modulation.1",
              "proj_out_2": "final_layer.linear"}
_SHARED = {"norm1.emb.timestep_embedder.linear_1": "t_embedder.mlp.0",
           "norm1.emb.timestep_embedder.linear_2": "t_embedder.mlp.2",
           "norm1.emb.class_embedder.embedding_table": "y_embedder.embedding_table"}


def is_diffusers_dit(sd):
    return any(k.startswith("transformer_blocks.") for k in sd)


def diffusers_to_official(sd):
    """A diffusers DiTTransformer2DModel state_dict -> the official DiT state_dict (NumPy arrays).

    q, k and v are stacked into the fused qkv (rows q, then k, then v: docs/paper.md §1.5); the timestep
    and label embedders, copied into every block by diffusers, are taken from block 0 (and the
    copies checked equal). The sin-cos table is not saved by diffusers and is rebuilt by minidit.
    """
    out, qkv = {}, {}
    for key, v in sd.items():
        name, kind = key.rsplit(".", 1)  # kind: weight / bias
        m = _D_BLOCK.fullmatch(name)
        if m:
            i, rest = int(m.group(1)), m.group(2)
            if rest in _SHARED:
                target = f"{_SHARED[rest]}.{kind}"
                if target in out:
                    if i and not np.array_equal(out[target], v):
                        raise ValueError(f"diffusers DiT: block {i}'s copy of {rest} differs from block 0's")
                    continue
                out[target] = v
            elif rest in _BLOCK_NAMES:
                out[f"blocks.{i}.{_BLOCK_NAMES[rest]}.{kind}"] = v
            elif rest in ("attn1.to_q", "attn1.to_k", "attn1.to_v"):
                qkv.setdefault((i, kind), {})[rest[-1]] = v
            else:
                raise ValueError(f"diffusers DiT: unexpected weight {key!r} (not an adaLN-Zero DiT?)")
        elif name in _TOP_NAMES:
            out[f"{_TOP_NAMES[name]}.{kind}"] = v
        else:
            raise ValueError(f"diffusers DiT: unexpected weight {key!r}")
    for (i, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise ValueError(f"diffusers DiT: block {i} lacks attn1.to_{({'q', 'k', 'v'} - set(parts)).pop()}")
        out[f"blocks.{i}.attn.qkv.{kind}"] = np.concatenate([parts["q"], parts["k"], parts["v"]], axis=0)
    return out


def config_from_official(sd, num_heads=None, input_size=None):
    """The DiTConfig an official state_dict was made for, read off its shapes.

    The number of heads is not visible in the weights: it is taken from the paper's configuration
    of the same depth and width (DiT-XL: 16), or must be given.
    """
    need = ("x_embedder.proj.weight", "y_embedder.embedding_table.weight", "final_layer.linear.weight")
    missing = [k for k in need if k not in sd]
    if missing:
        raise ValueError(f"not a DiT state_dict: no {missing[0]} (is this the VAE, or another model's file?)")
    D, C, p, _ = sd["x_embedder.proj.weight"].shape
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    if input_size is None:
        if "pos_embed" not in sd:
            raise ValueError("the state_dict has no pos_embed: give the latent size (input_size)")
        input_size = int(round(sd["pos_embed"].shape[1] ** 0.5)) * p
    if num_heads is None:
        known = {(c.depth, c.hidden_size): c.num_heads for c in (f() for f in DiT_models.values())}
        if (depth, D) not in known:
            raise ValueError(f"a DiT of depth {depth} and width {D} is none of the paper's models: "
                             f"give its number of heads")
        num_heads = known[(depth, D)]
    rows = sd["y_embedder.embedding_table.weight"].shape[0]
    out = sd["final_layer.linear.weight"].shape[0] // (p * p)
    # one spare row is the null class of classifier-free guidance (label dropout 0.1 in training)
    return DiTConfig(input_size=int(input_size), patch_size=int(p), in_channels=int(C), hidden_size=int(D),
                     depth=depth, num_heads=int(num_heads), num_classes=rows - 1, class_dropout_prob=0.1,
                     learn_sigma=out == 2 * C)


def _config_from_diffusers(c):
    D = c["num_attention_heads"] * c["attention_head_dim"]
    in_ch = c.get("in_channels", 4)
    return DiTConfig(input_size=c["sample_size"], patch_size=c["patch_size"], in_channels=in_ch, hidden_size=D,
                     depth=c["num_layers"], num_heads=c["num_attention_heads"],
                     num_classes=c.get("num_embeds_ada_norm", 1000), class_dropout_prob=0.1,
                     learn_sigma=c.get("out_channels", 2 * in_ch) == 2 * in_ch)


def load_released_dit(path, num_heads=None, dtype=np.float32):
    """(params, cfg, source) for a released DiT: the official .pt or a diffusers folder/file.

    path: `DiT-XL-2-256x256.pt`, a diffusers pipeline folder (with `transformer/`), its
    `transformer/` folder, or a weight file inside it. Torch is never imported.
    """
    wf = weight_file(path, "transformer")
    sd = read_state_dict(wf)
    if is_diffusers_dit(sd):
        conf = read_config(wf)
        official = diffusers_to_official(sd)
        if conf is not None:
            cfg = _config_from_diffusers(conf)
            if num_heads is not None and num_heads != cfg.num_heads:
                raise ValueError(f"{wf.parent / 'config.json'} says {cfg.num_heads} heads, not {num_heads}")
        else:
            cfg = config_from_official(official, num_heads)
        source = "diffusers"
    else:
        official, source = sd, "official"
        cfg = config_from_official(sd, num_heads)
    try:
        params = from_official(official, cfg, dtype=dtype, check_pos_embed="pos_embed" in official)
    except ValueError as e:
        raise ValueError(f"{wf}: {e}") from None
    return params, cfg, f"{source} ({wf})"
