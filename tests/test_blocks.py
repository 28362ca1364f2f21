"""The block-design registry and the four designs of the paper: float64 gradient checks of x, the
conditioning and every parameter, with all weights random (zero-initialised ones included),
tolerance 1e-7; the adaLN-Zero block starts as the identity; and a fifth, toy design added
through the registry alone is built, initialised, counted, gradient-checked and trained."""
import numpy as np
import pytest

from conftest import gradcheck, randn
from minidit import flops
from minidit.backend import Generator, get_array_module, to_numpy
from minidit.blocks import (BLOCK_DESIGNS, BlockDesign, block_backward, block_forward, get_design,
                            register_design, registered, sum_condition, sum_condition_backward)
from minidit.diffusion import create_diffusion
from minidit.layers import (layernorm_backward, layernorm_forward, linear_backward, linear_forward,
                            mlp_backward, mlp_forward, modulate_backward, modulate_forward)
from minidit.model import DiTConfig, dit_backward, dit_forward, init_params, param_shapes
from minidit.training.optim import AdamW, init_ema
from minidit.commands.train import train_step

N, T, D, H, NH = 2, 5, 8, 32, 2


def _block_params(xp, rng, design, prefix="blocks.0."):
    """Every parameter of one block random, LayerNorm gains near 1 (nothing switched off)."""
    return {prefix + k: randn(xp, rng, *s, scale=0.4) + (1.0 if ".norm" in "." + k and k.endswith(".w") else 0.0)
            for k, s in get_design(design).param_shapes(D, H).items()}


def _check_block(xp, rng, design, name):
    """Gradient-check one block of `design` in x, its conditioning and all its parameters."""
    rec = get_design(design)
    P = _block_params(xp, rng, design)
    h, cond = rec.condition(randn(xp, rng, N, T, D), randn(xp, rng, N, D), randn(xp, rng, N, D))
    arrays = dict(x=h, **P)
    if cond is not None:
        arrays["cond"] = cond

    def f(x, cond=None, **params):
        return block_forward(design, params, "blocks.0.", x, cond, NH)

    def b(dout, cache):
        dx, dcond, g = block_backward(design, dout, cache)
        return dict(x=dx, cond=dcond, **g)

    # the cross-attention key bias has an exactly-zero gradient (softmax ignores a shift shared
    # by all keys of a query; see test_cross_attention.py): checked in absolute terms instead
    key_biases = [k for k in arrays if k.endswith("cross_attn.k.b")]
    wrt = [k for k in arrays if k not in key_biases]
    res = gradcheck(name, f, b, arrays, tol=1e-7, wrt=wrt)
    assert len(res.rows) == len(wrt)
    if key_biases:
        out, cache = f(**arrays)
        g = b(xp.asarray(rng.standard_normal(out.shape)), cache)
        assert max(np.abs(to_numpy(g[k])).max() for k in key_biases) < 1e-12


@pytest.mark.parametrize("design", list(BLOCK_DESIGNS))
def test_block_gradcheck(xp, rng, design):
    _check_block(xp, rng, design, f"block {design}")


@pytest.mark.parametrize("design", list(BLOCK_DESIGNS))
def test_condition_gradcheck(xp, rng, design):
    """How each design hands t_emb and y_emb to its blocks, and the gradient back."""
    rec = get_design(design)
    arrays = dict(h=randn(xp, rng, N, T, D), t_emb=randn(xp, rng, N, D), y_emb=randn(xp, rng, N, D))

    def f(h, t_emb, y_emb):
        h2, cond = rec.condition(h, t_emb, y_emb)
        parts = [h2.reshape(N, -1)] + ([] if cond is None else [cond.reshape(N, -1)])
        return xp.concatenate(parts, axis=1), (h2.shape, None if cond is None else cond.shape)

    def b(dout, shapes):
        (hs, cs) = shapes
        n = int(np.prod(hs[1:]))
        dh2 = dout[:, :n].reshape(hs)
        dcond = None if cs is None else dout[:, n:].reshape(cs)
        dh, dt, dy = rec.condition_backward(dh2, dcond)
        return dict(h=dh, t_emb=dt, y_emb=dy)

    gradcheck(f"conditioning {design}", f, b, arrays, tol=1e-7)
    assert rec.condition(arrays["h"], arrays["t_emb"], arrays["y_emb"])[0].shape[1] == T + rec.extra_tokens


def test_registry_is_the_papers_four_designs_in_table_order():
    assert list(BLOCK_DESIGNS) == list(flops.PAPER_BLOCK_DESIGNS)  # Table 4's rows, in its order
    assert all(BLOCK_DESIGNS[n].name == n for n in BLOCK_DESIGNS)


def test_adaln_zero_block_starts_as_identity(xp, rng):
    P = _block_params(xp, rng, "adaLN-Zero")
    for k in get_design("adaLN-Zero").zero_init:
        P["blocks.0." + k] *= 0
    x = randn(xp, rng, N, T, D)
    out, _ = block_forward("adaLN-Zero", P, "blocks.0.", x, randn(xp, rng, N, D), NH)
    np.testing.assert_array_equal(to_numpy(out), to_numpy(x))  # zero gates: exactly the identity


def test_unknown_design_names_the_known_ones(xp, rng):
    with pytest.raises(ValueError, match="unknown block design 'film'.*adaLN-Zero"):
        block_forward("film", {}, "blocks.0.", randn(xp, rng, N, T, D), None, NH)
    with pytest.raises(ValueError, match="DiTConfig.block: unknown block design"):
        DiTConfig(block="film")
    with pytest.raises(ValueError, match="already registered"):
        register_design(BLOCK_DESIGNS["adaLN"])


# A fifth design, written here and added through the registry alone ---------------------------
# "FiLM-MLP": no attention; one MLP branch on a LayerNorm modulated by c (feature-wise linear
# modulation, Perez et al. 2018): x = x + mlp(modulate(LN(x), shift, scale)), [shift, scale] = c W + b.

def film_forward(P, pre, x, c, num_heads):
    mod, c_mod = linear_forward(c, P[pre + "film.w"], P[pre + "film.b"])
    shift, scale = mod[:, :x.shape[-1]], mod[:, x.shape[-1]:]
    h, c_ln = layernorm_forward(x, eps=1e-6)
    h, c_m = modulate_forward(h, shift, scale)
    m, c_mlp = mlp_forward(h, P[pre + "mlp.fc1.w"], P[pre + "mlp.fc1.b"], P[pre + "mlp.fc2.w"], P[pre + "mlp.fc2.b"])
    return x + m, (pre, c_mod, c_ln, c_m, c_mlp)


def film_backward(dout, cache):
    pre, c_mod, c_ln, c_m, c_mlp = cache
    g = {}
    dh, g[pre + "mlp.fc1.w"], g[pre + "mlp.fc1.b"], g[pre + "mlp.fc2.w"], g[pre + "mlp.fc2.b"] = \
        mlp_backward(dout, c_mlp)
    dh, dshift, dscale = modulate_backward(dh, c_m)
    dx = dout + layernorm_backward(dh, c_ln)[0]
    xp = get_array_module(dout)
    dc, g[pre + "film.w"], g[pre + "film.b"] = linear_backward(xp.concatenate([dshift, dscale], axis=1), c_mod)
    return dx, dc, g


TOY = BlockDesign(
    "toy FiLM-MLP", film_forward, film_backward,
    param_shapes=lambda D, H: {"film.w": (D, 2 * D), "film.b": (2 * D,), "mlp.fc1.w": (D, H),
                               "mlp.fc1.b": (H,), "mlp.fc2.w": (H, D), "mlp.fc2.b": (D,)},
    zero_init=("film.w", "film.b"),
    macs=lambda T, D, H: 2 * D * D + 2 * T * D * H,
    condition=sum_condition, condition_backward=sum_condition_backward)


def test_a_toy_design_added_through_the_registry_alone(xp, rng):
    with registered(TOY):
        _check_block(xp, rng, TOY.name, "toy design block (FiLM-MLP)")
        cfg = DiTConfig(input_size=8, patch_size=2, in_channels=3, hidden_size=16, depth=2, num_heads=2,
                        num_classes=5, block=TOY.name)
        shapes = param_shapes(cfg)
        assert shapes["blocks.1.film.w"] == (16, 32) and "blocks.0.attn.qkv.w" not in shapes
        P0 = init_params(cfg, seed=0)
        assert not np.any(P0["blocks.1.film.w"]) and np.any(P0["blocks.1.mlp.fc1.w"])  # its zero_init
        # Gflops from the record: patch, t-MLP, blocks, adaptive final layer, decoder
        T, Dm = 16, 16
        want = T * 12 * Dm + 256 * Dm + Dm * Dm + 2 * (2 * Dm * Dm + 2 * T * Dm * 64) + 2 * Dm * Dm + T * Dm * 24
        assert flops.forward_macs(cfg) == want
        # the whole model, every parameter random, in float64
        P = {k: xp.asarray(0.3 * rng.standard_normal(s)) for k, s in shapes.items()}
        x = xp.asarray(rng.standard_normal((2, 3, 8, 8)))
        t, y = xp.asarray(np.array([7, 500])), xp.asarray(np.array([1, 5]))

        def f(x, **params):
            return dit_forward(params, x, t, y, cfg)

        def b(dout, cache):
            dx, g = dit_backward(dout, cache)
            return dict(x=dx, **g)

        gradcheck("whole model, toy design", f, b, dict(x=x, **P), tol=1e-5, num_checks=6)
        # and it trains: one step of the training recipe changes the weights, the loss is finite
        dev = "cpu" if xp is np else "gpu"
        params = {k: xp.asarray(v) for k, v in P0.items()}
        ema, opt = init_ema(params), AdamW(params, lr=1e-3)
        gen = Generator(0, device=dev)
        xb = gen.normal((4, 3, 8, 8), device=dev)
        yb = gen.integers(0, 5, (4,), device=dev)
        stats = train_step(params, ema, opt, cfg, create_diffusion(""), xb, yb, gen, 0.9)
        assert stats["finite"] and stats["loss"] > 0
        assert np.any(to_numpy(params["final_layer.linear.w"]) != 0)
    assert TOY.name not in BLOCK_DESIGNS
