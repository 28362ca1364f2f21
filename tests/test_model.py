"""The whole DiT: config validation, the official initialisation's consequences (output exactly
zero, only the final linear layer gets a gradient), whole-model float64 gradient checks of
every block design with all zero-initialised weights randomised (tolerance 1e-5), and guidance."""
import numpy as np
import pytest

from conftest import gradcheck
from minidit.backend import Generator, to_numpy
from minidit.blocks import BLOCK_DESIGNS
from minidit.model import (DiT_models, DiTConfig, TEACHING_MODELS, apply_label_dropout,
                           dit_backward, dit_forward, forward_with_cfg, get_config, init_params,
                           make_model_fn, param_shapes)


def tiny(design="adaLN-Zero", **kw):
    base = dict(input_size=8, patch_size=2, in_channels=3, hidden_size=16, depth=2, num_heads=2,
                num_classes=5, block=design)
    base.update(kw)
    return DiTConfig(**base)


def _inputs(xp, cfg, n=2, seed=0):
    rng = np.random.default_rng(seed)
    x = xp.asarray(rng.standard_normal((n, cfg.in_channels, cfg.input_size, cfg.input_size)))
    t = xp.asarray(np.array([3, 871, 0, 999][:n]))
    y = xp.asarray(np.array([1, cfg.num_classes, 4, 0][:n]))  # includes the null class
    return x, t, y


def randomised_params(xp, cfg, seed=1, dtype=np.float64):
    """Every parameter random (zero-initialised ones too), LayerNorm gains near 1."""
    rng = np.random.default_rng(seed)
    P = {}
    for k, s in param_shapes(cfg).items():
        v = 0.3 * rng.standard_normal(s)
        if ".norm" in k and k.endswith(".w"):
            v += 1.0
        P[k] = xp.asarray(v.astype(dtype))
    return P


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
    assert (cfg.input_size, cfg.num_classes, cfg.block) == (8, 10, "adaLN-Zero")
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
    g, dx = dit_backward(xp.asarray(np.random.default_rng(0).standard_normal(out.shape).astype(np.float32)), cache)
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
        g, dx = dit_backward(dout, cache)
        return dict(x=dx, **g)

    # 6 random entries of every parameter tensor and of x; the cross-attention key bias has an
    # exactly-zero true gradient (softmax shift invariance), so it is checked to be ~0 instead
    wrt = [k for k in arrays if not k.endswith("cross_attn.k.b")]
    gradcheck(f"whole model {design}", f, b, arrays, tol=1e-5, num_checks=6, wrt=wrt)
    if design == "cross-attention":
        out, cache = f(**arrays)
        g = b(xp.asarray(np.random.default_rng(2).standard_normal(out.shape)), cache)
        assert max(np.abs(to_numpy(g[k])).max() for k in g if k.endswith("cross_attn.k.b")) < 1e-12


def test_input_shape_errors(xp):
    cfg = tiny()
    P = randomised_params(xp, cfg)
    x, t, y = _inputs(xp, cfg)
    with pytest.raises(ValueError, match=r"expected \(N, 3, 8, 8\)"):
        dit_forward(P, x[:, :2], t, y, cfg)
    with pytest.raises(ValueError, match="class id 6"):
        dit_forward(P, x, t, y * 0 + 6, cfg)


def test_label_dropout_is_explicit(xp):
    cfg = tiny()
    y = xp.asarray(np.arange(10) % 5)
    forced = apply_label_dropout(y, cfg, None, force_drop_ids=xp.asarray([1] + [0] * 9))
    assert int(forced[0]) == 5 and np.array_equal(to_numpy(forced[1:]), to_numpy(y[1:]))
    dev = "gpu" if xp is not np else "cpu"
    a = apply_label_dropout(y, cfg, Generator(0, device=dev))
    np.testing.assert_array_equal(to_numpy(a), to_numpy(apply_label_dropout(y, cfg, Generator(0, device=dev))))


def test_guidance(xp):
    cfg = tiny(in_channels=4)
    P = randomised_params(xp, cfg)
    x, t, _ = _inputs(xp, cfg)
    y = xp.asarray([1, 3])
    cond = to_numpy(dit_forward(P, x, t, y, cfg)[0])
    uncond = to_numpy(dit_forward(P, x, t, xp.full_like(y, 5), cfg)[0])
    # scale 1 gives the conditional prediction exactly
    np.testing.assert_allclose(to_numpy(make_model_fn(P, cfg, y, 1.0)(x, t)), cond, rtol=1e-12)
    xx, tt, yy = xp.concatenate([x, x]), xp.concatenate([t, t]), xp.concatenate([y, xp.full_like(y, 5)])
    s = 4.0
    allg = to_numpy(forward_with_cfg(P, xx, tt, yy, s, cfg, guidance="all"))
    guided = uncond[:, :4] + s * (cond[:, :4] - uncond[:, :4])
    np.testing.assert_allclose(allg[:2, :4], guided, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(allg[2:, :4], guided, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(allg[:2, 4:], cond[:, 4:], rtol=1e-12)  # variance channels unguided
    off = to_numpy(forward_with_cfg(P, xx, tt, yy, s, cfg, guidance="official"))
    np.testing.assert_allclose(off[:2, :3], guided[:, :3], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(off[:2, 3:], cond[:, 3:], rtol=1e-12)  # channel 3 passes through
    np.testing.assert_allclose(off[2:, 3:], uncond[:, 3:], rtol=1e-12)
    np.testing.assert_allclose(to_numpy(make_model_fn(P, cfg, y, s)(x, t)), allg[:2], rtol=1e-12)
    with pytest.raises(ValueError, match=">= 1"):
        make_model_fn(P, cfg, y, 0.5)


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
    g_keep, dx_keep = dit_backward(dout, cache)
    g_free, dx_free = dit_backward(dout, cache, release=True)   # the kept cache can be used again
    assert all(c is None for c in cache["c_blocks"])             # ... but this one is used up
    for k in g_keep:
        np.testing.assert_array_equal(to_numpy(g_free[k]), to_numpy(g_keep[k]), err_msg=k)
    np.testing.assert_array_equal(to_numpy(dx_free), to_numpy(dx_keep))
