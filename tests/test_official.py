"""Conversion to and from the official PyTorch state_dict layout: exact round trips, official
shapes and key names, clear errors for a state_dict that does not fit the config."""
import numpy as np
import pytest

from minidit import flops
from minidit.blocks import BLOCK_DESIGNS
from minidit.model import DiT_models, DiTConfig, dit_forward, init_params, param_shapes
from minidit.official import from_official, to_official


def _random(cfg, seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in param_shapes(cfg).items()}


@pytest.mark.parametrize("design", BLOCK_DESIGNS)
def test_round_trip_exact(design):
    cfg = DiTConfig(input_size=8, patch_size=4, in_channels=4, hidden_size=16, depth=2,
                    num_heads=2, num_classes=7, block=design)
    P = _random(cfg)
    back = from_official(to_official(P, cfg), cfg)
    assert set(back) == set(P)
    for k in P:
        np.testing.assert_array_equal(back[k], P[k])


def test_official_names_and_shapes():
    cfg = DiT_models["DiT-S/8"](depth=1)  # S/8 at 256 px, one block to keep it small
    sd = to_official(init_params(cfg), cfg)
    assert sd["x_embedder.proj.weight"].shape == (384, 4, 8, 8)
    assert sd["pos_embed"].shape == (1, 16, 384)
    assert sd["t_embedder.mlp.0.weight"].shape == (384, 256)
    assert sd["y_embedder.embedding_table.weight"].shape == (1001, 384)
    assert sd["blocks.0.attn.qkv.weight"].shape == (1152, 384)
    assert sd["blocks.0.adaLN_modulation.1.weight"].shape == (2304, 384)
    assert sd["final_layer.linear.weight"].shape == (8 * 8 * 8, 384)
    assert sum(v.size for v in sd.values()) == flops.count_params(cfg)["all"]


def test_conv_weight_layout_matches_patch_order():
    """A conv kernel W[d, c, a, b] must act on pixel (c, a, b) of each patch."""
    cfg = DiTConfig(input_size=4, patch_size=2, in_channels=2, hidden_size=8, depth=1,
                    num_heads=2, num_classes=3)
    sd = to_official(_random(cfg), cfg)
    P = from_official(sd, cfg)
    x = np.zeros((1, 2, 4, 4), np.float32)
    x[0, 1, 2, 3] = 1.0  # channel 1, grid (1, 1), in-patch (0, 1)
    tokens = x.reshape(1, 2, 2, 2, 2, 2).transpose(0, 2, 4, 1, 3, 5).reshape(1, 4, 8)
    emb = tokens @ P["x_embedder.proj.w"]
    np.testing.assert_array_equal(emb[0, 3], sd["x_embedder.proj.weight"][:, 1, 0, 1])


def test_errors_name_the_problem():
    cfg = DiTConfig(input_size=8, patch_size=4, in_channels=4, hidden_size=16, depth=2, num_heads=2, num_classes=7)
    sd = to_official(_random(cfg), cfg)
    bad = dict(sd)
    del bad["blocks.1.mlp.fc2.bias"]
    with pytest.raises(ValueError, match="blocks.1.mlp.fc2.bias"):
        from_official(bad, cfg)
    bad = dict(sd, **{"final_layer.linear.weight": np.zeros((3, 16), np.float32)})
    with pytest.raises(ValueError, match="final_layer.linear.weight has shape"):
        from_official(bad, cfg)
    with pytest.raises(ValueError, match="pos_embed"):
        from_official(dict(sd, pos_embed=sd["pos_embed"] * 0), cfg)
    # a "module." prefix (DDP checkpoints) is accepted
    assert set(from_official({"module." + k: v for k, v in sd.items()}, cfg)) == set(param_shapes(cfg))


def test_converted_weights_give_the_same_output():
    cfg = DiTConfig(input_size=8, patch_size=2, in_channels=4, hidden_size=16, depth=2, num_heads=2, num_classes=7)
    P = _random(cfg)
    x = np.random.default_rng(1).standard_normal((2, 4, 8, 8)).astype(np.float32)
    t, y = np.array([5, 900]), np.array([0, 7])
    a = dit_forward(P, x, t, y, cfg)[0]
    b = dit_forward(from_official(to_official(P, cfg), cfg), x, t, y, cfg)[0]
    np.testing.assert_array_equal(a, b)
