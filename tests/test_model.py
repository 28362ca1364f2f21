"""The whole DiT: config validation, the official initialisation's consequences (output exactly
zero, only the final linear layer gets a gradient), whole-model float64 gradient checks of
every block design with all zero-initialised weights randomised (tolerance 1e-5), and guidance."""
import numpy as np
import pytest

from conftest import dit_inputs as _inputs, gradcheck, randomised_params, tiny_dit as tiny
from minidit.backend import Generator, to_numpy
from minidit.blocks import BLOCK_DESIGNS
from minidit.model import (DiT_models, DiTConfig, TEACHING_MODELS, apply_label_dropout,
                           dit_backward, dit_forward, get_config, init_params)


@pytest.mark.parametrize("field,value,match", [
    ("num_heads", 5, "not divisible by num_heads"), ("hidden_size", 18, "divisible by 4"),
    ("input_size", 9, "not divisible by patch_size"), ("block", "film", "unknown block design"),
    ("depth", 0, "depth must be a positive integer"),
])
def test_invalid_configs_name_the_field(field, value, match):
    kw = dict(hidden_size=16, num_heads=2, input_size=8, patch_size=2)
    kw[field] = value
    if field == "hidden_size":
        kw["num_heads"] = 2
    with pytest.raises(ValueError, match=match):
        DiTConfig(**kw)


def test_model_zoo():
    names = [f"DiT-{s}/{p}" for s in ("S", "B", "L", "XL") for p in (2, 4, 8)]
    assert all(n in DiT_models for n in names)
    cfg = DiT_models["DiT-S/2"](input_size=8, num_classes=10)
    assert (cfg.depth, cfg.hidden_size, cfg.num_heads, cfg.patch_size) == (12, 384, 6, 2)
    assert (cfg.input_size, cfg.num_classes) == (8, 10) and cfg.design is BLOCK_DESIGNS["adaLN-Zero"]
    assert DiT_models["DiT-XL/4"]().hidden_size // DiT_models["DiT-XL/4"]().num_heads == 72
    assert all(n.startswith("minidit-") for n in TEACHING_MODELS)  # ours, clearly named
    with pytest.raises(ValueError, match="unknown model"):
        get_config("DiT-M/2")


@pytest.mark.parametrize("design", BLOCK_DESIGNS)
def test_official_init_outputs_zero_and_only_final_linear_learns(xp, design):
    cfg = tiny(design)
    P = {k: xp.asarray(v) for k, v in init_params(cfg, seed=0).items()}
    x, t, y = _inputs(xp, cfg)
    x = x.astype(np.float32)
    out, cache = dit_forward(P, x, t, y, cfg)
    assert out.shape == (2, 6, 8, 8)
    assert not np.any(to_numpy(out))  # exactly zero
    dx, g = dit_backward(xp.asarray(np.random.default_rng(0).standard_normal(out.shape).astype(np.float32)), cache)
    assert set(g) == set(P)
    nonzero = sorted(k for k in g if np.any(to_numpy(g[k])))
    assert nonzero == ["final_layer.linear.b", "final_layer.linear.w"]
    assert not np.any(to_numpy(dx))


def test_init_statistics():
    cfg = tiny(hidden_size=32, depth=3)
    P = init_params(cfg, seed=0)
    bound = np.sqrt(6 / (32 + 96))  # xavier over the whole fused (D, 3D) qkv matrix
    w = P["blocks.0.attn.qkv.w"]
    assert w.dtype == np.float32 and np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
    assert abs(P["y_embedder.embedding_table.w"].std() - 0.02) < 0.004
    assert abs(P["t_embedder.mlp.0.w"].std() - 0.02) < 0.002
    assert not np.any(P["blocks.2.adaLN_modulation.1.w"]) and not np.any(P["final_layer.linear.w"])
    pb = np.sqrt(6 / (3 * 4 + 32))  # patch embedding: xavier on the (D, C*p*p) view
    assert np.abs(P["x_embedder.proj.w"]).max() <= pb
    adaln = init_params(tiny("adaLN", hidden_size=32), seed=0)
    assert np.any(adaln["blocks.0.adaLN_modulation.1.w"])  # adaLN keeps xavier; only adaLN-Zero zeroes
    np.testing.assert_array_equal(init_params(cfg, seed=0)["blocks.1.mlp.fc1.w"], P["blocks.1.mlp.fc1.w"])


@pytest.mark.parametrize("design", BLOCK_DESIGNS)
def test_whole_model_gradcheck(xp, design):
    cfg = tiny(design)
    P = randomised_params(xp, cfg)
    x, t, y = _inputs(xp, cfg)
    arrays = dict(x=x, **P)

    def f(x, **params):
        return dit_forward(params, x, t, y, cfg)

    def b(dout, cache):
        dx, g = dit_backward(dout, cache)
        return dict(x=dx, **g)

    # 6 random entries of every parameter tensor and of x; the cross-attention key bias has an
    # exactly-zero true gradient (softmax shift invariance), so it is checked to be ~0 instead
    wrt = [k for k in arrays if not k.endswith("cross_attn.k.b")]
    gradcheck(f"whole model {design}", f, b, arrays, tol=1e-5, num_checks=6, wrt=wrt)
    key_biases = [k for k in arrays if k.endswith("cross_attn.k.b")]
    if key_biases:
        out, cache = f(**arrays)
        g = b(xp.asarray(np.random.default_rng(2).standard_normal(out.shape)), cache)
        assert max(np.abs(to_numpy(g[k])).max() for k in key_biases) < 1e-12


def test_input_shape_errors(xp):
    cfg = tiny()
    P = randomised_params(xp, cfg)
    x, t, y = _inputs(xp, cfg)
    with pytest.raises(ValueError, match=r"expected \(N, 3, 8, 8\)"):
        dit_forward(P, x[:, :2], t, y, cfg)
    with pytest.raises(ValueError, match="class id 6"):  # labels given on the host are checked
        dit_forward(P, x, t, np.full(2, 6), cfg)


def test_label_dropout_is_explicit(xp):
    cfg = tiny()
    y = xp.asarray(np.arange(10) % 5)
    forced = apply_label_dropout(y, cfg, None, force_drop_ids=xp.asarray([1] + [0] * 9))
    assert int(forced[0]) == 5 and np.array_equal(to_numpy(forced[1:]), to_numpy(y[1:]))
    dev = "gpu" if xp is not np else "cpu"
    a = apply_label_dropout(y, cfg, Generator(0, device=dev))
    np.testing.assert_array_equal(to_numpy(a), to_numpy(apply_label_dropout(y, cfg, Generator(0, device=dev))))


def test_forward_without_cache_gives_the_same_output(xp):
    cfg = tiny()
    P = randomised_params(xp, cfg)
    x, t, y = _inputs(xp, cfg)
    out, cache = dit_forward(P, x, t, y, cfg, keep_cache=False)
    assert cache is None
    np.testing.assert_array_equal(to_numpy(out), to_numpy(dit_forward(P, x, t, y, cfg)[0]))


def test_backward_that_releases_the_cache_gives_the_same_gradients(xp):
    cfg = tiny()
    P = randomised_params(xp, cfg)
    x, t, y = _inputs(xp, cfg)
    out, cache = dit_forward(P, x, t, y, cfg)
    dout = xp.asarray(np.random.default_rng(3).standard_normal(out.shape))
    dx_keep, g_keep = dit_backward(dout, cache)
    dx_free, g_free = dit_backward(dout, cache, release=True)   # the kept cache can be used again
    assert all(c is None for c in cache["c_blocks"])             # ... but this one is used up
    for k in g_keep:
        np.testing.assert_array_equal(to_numpy(g_free[k]), to_numpy(g_keep[k]), err_msg=k)
    np.testing.assert_array_equal(to_numpy(dx_free), to_numpy(dx_keep))
