"""Tests for minidit.training.optim: AdamW against hand-computed steps and PyTorch, EMA (docs/paper.md §4.3)."""
import math

import numpy as np
import pytest

from minidit.backend import to_numpy
from minidit.training.optim import AdamW, Muon, ema_update, init_ema, muon_matrices, orthogonalize


def _adamw_reference(p, grads, lr, b1, b2, eps, wd):
    """AdamW on one Python float, textbook form (bias-corrected moments), for the expected values."""
    m = v = 0.0
    out = []
    for t, g in enumerate(grads, start=1):
        p = p * (1 - lr * wd)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        p = p - lr * m_hat / (math.sqrt(v_hat) + eps)
        out.append(p)
    return out


def test_adamw_hand_computed_steps(xp):
    # Two scalars, three steps, lr 0.1. Written out, the first step of the first element is
    # 1 - 0.1 * 0.5 / (0.5 + 1e-8) = 0.900000002 (Adam's first step is lr * sign(g), nearly).
    grads_a, grads_b = [0.5, -1.0, 0.25], [-3.0, 0.5, 2.0]
    expected_a = [0.900000002, 0.9366103542405654, 0.9502794203389762]
    expected_b = [-1.9000000003333333, -1.8461462453909412, -1.8464974784252373]
    # the literals above are what the plain-float reference gives
    np.testing.assert_allclose(_adamw_reference(1.0, grads_a, 0.1, 0.9, 0.999, 1e-8, 0.0), expected_a,
                               rtol=1e-15)
    np.testing.assert_allclose(_adamw_reference(-2.0, grads_b, 0.1, 0.9, 0.999, 1e-8, 0.0), expected_b,
                               rtol=1e-15)

    params = {"w": xp.array([1.0, -2.0], dtype=xp.float64)}
    opt = AdamW(params, lr=0.1)
    for t in range(3):
        opt.step(params, {"w": xp.array([grads_a[t], grads_b[t]], dtype=xp.float64)})
        got = to_numpy(params["w"])
        print(f"step {t + 1}: got {got.tolist()}, expected {[expected_a[t], expected_b[t]]}")
        np.testing.assert_allclose(got, [expected_a[t], expected_b[t]], rtol=1e-13, atol=0)
    assert opt.step_count == 3


def test_adamw_weight_decay(xp):
    # Decoupled weight decay: with zero gradients the moments stay zero, the Adam update is
    # 0 / (0 + eps) = 0, and each step only multiplies the weights by (1 - lr * wd).
    p0 = np.array([2.0, -3.0, 0.5])
    params = {"w": xp.asarray(p0.copy())}
    opt = AdamW(params, lr=0.1, weight_decay=0.5)
    for _ in range(3):
        opt.step(params, {"w": xp.zeros(3)})
    np.testing.assert_allclose(to_numpy(params["w"]), p0 * 0.95 ** 3, rtol=1e-15)
    assert float(abs(opt.m["w"]).max()) == 0.0 and float(abs(opt.v["w"]).max()) == 0.0
    # the decay is not part of the gradient: with decay on, the steps are reference AdamW's
    params = {"w": xp.array([1.0])}
    opt = AdamW(params, lr=0.1, weight_decay=0.5)
    for g, want in zip([0.5, -1.0, 0.25], [0.8500000019999999, 0.8441103541405653, 0.8155739025319478]):
        opt.step(params, {"w": xp.array([g])})
        np.testing.assert_allclose(float(params["w"][0]), want, rtol=1e-13)
    # without decay and without gradient nothing moves
    params = {"w": xp.asarray(p0.copy())}
    AdamW(params, lr=0.1).step(params, {"w": xp.zeros(3)})
    np.testing.assert_array_equal(to_numpy(params["w"]), p0)


def _random_problem(xp, seed=0):
    rng = np.random.default_rng(seed)
    params = {"blocks.0.attn.qkv.w": rng.standard_normal((4, 12)).astype(np.float32),
              "blocks.0.attn.qkv.b": rng.standard_normal(12).astype(np.float32)}
    grads = [{k: rng.standard_normal(p.shape).astype(np.float32) for k, p in params.items()}
             for _ in range(6)]
    return ({k: xp.asarray(p) for k, p in params.items()},
            [{k: xp.asarray(g) for k, g in gs.items()} for gs in grads])


def test_adamw_state_round_trip_continues_identically(xp):
    params, grads = _random_problem(xp)
    opt = AdamW(params, lr=1e-2, weight_decay=0.01)
    for g in grads[:3]:
        opt.step(params, g)
    saved_params = {k: to_numpy(p).copy() for k, p in params.items()}
    state = opt.state_dict()
    assert state["step"] == 3
    assert all(type(a) is np.ndarray for a in list(state["m"].values()) + list(state["v"].values()))
    for g in grads[3:]:
        opt.step(params, g)

    resumed = {k: xp.asarray(p) for k, p in saved_params.items()}
    opt2 = AdamW(resumed)            # default hyperparameters: load_state_dict restores them
    opt2.load_state_dict(state)
    assert opt2.lr == 1e-2 and opt2.weight_decay == 0.01
    for g in grads[3:]:
        opt2.step(resumed, g)
    for k in params:
        np.testing.assert_array_equal(to_numpy(resumed[k]), to_numpy(params[k]))
        assert type(opt2.m[k]) is type(params[k])   # moments back on the params' device

    # a state with only step, m and v keeps the constructor's hyperparameters
    opt3 = AdamW({k: xp.asarray(p) for k, p in saved_params.items()}, lr=5e-3)
    opt3.load_state_dict({"step": state["step"], "m": state["m"], "v": state["v"]})
    assert opt3.step_count == 3 and opt3.lr == 5e-3 and opt3.weight_decay == 0.0


def test_adamw_float32_stays_float32_in_place(xp):
    params, grads = _random_problem(xp)
    ids = {k: id(p) for k, p in params.items()}
    opt = AdamW(params)
    opt.step(params, grads[0])
    for k, p in params.items():
        assert id(p) == ids[k] and p.dtype == np.float32
        assert opt.m[k].dtype == np.float32 and opt.v[k].dtype == np.float32


def test_adamw_clear_errors():
    params = {"a": np.zeros(3, np.float32), "b": np.zeros((2, 2), np.float32)}
    opt = AdamW(params)
    with pytest.raises(KeyError, match="'b'"):
        opt.step(params, {"a": np.ones(3, np.float32)})
    with pytest.raises(ValueError, match="'b'.*shape"):
        opt.step(params, {"a": np.ones(3, np.float32), "b": np.ones(4, np.float32)})
    assert opt.step_count == 0
    with pytest.raises(KeyError, match="'a'"):
        opt.load_state_dict({**opt.state_dict(), "m": {"b": np.zeros((2, 2))}})


def test_ema_formula_and_init(xp):
    params = {"w": xp.array([1.0, -2.0]), "pos_embed": xp.array([0.5])}
    ema = init_ema(params)
    for k in params:
        np.testing.assert_array_equal(to_numpy(ema[k]), to_numpy(params[k]))
        assert ema[k] is not params[k]
    params["w"][...] = xp.array([3.0, 0.0])          # the model moves on; the copy must not
    np.testing.assert_array_equal(to_numpy(ema["w"]), [1.0, -2.0])

    ema_update(ema, params, decay=0.9)
    # 0.9 * 1 + 0.1 * 3 = 1.2 and 0.9 * (-2) + 0.1 * 0 = -1.8; pos_embed is unchanged
    np.testing.assert_allclose(to_numpy(ema["w"]), [1.2, -1.8], rtol=1e-15)
    np.testing.assert_allclose(to_numpy(ema["pos_embed"]), [0.5], rtol=1e-15)
    ema_update(ema, params, decay=0.9)
    np.testing.assert_allclose(to_numpy(ema["w"]), [0.9 * 1.2 + 0.3, 0.9 * -1.8], rtol=1e-15)
    # decay 0 synchronises (DiT's update_ema(ema, model, decay=0))
    ema_update(ema, params, decay=0.0)
    np.testing.assert_array_equal(to_numpy(ema["w"]), [3.0, 0.0])
    # the default decay is the paper's 0.9999, with no warm-up
    ema2 = {"w": xp.array([0.0, 0.0])}
    ema_update(ema2, {"w": xp.array([1.0, 1.0])})
    np.testing.assert_allclose(to_numpy(ema2["w"]), [1e-4, 1e-4], rtol=1e-12)
    with pytest.raises(KeyError, match="pos_embed"):
        ema_update(ema, {"w": params["w"]})


def test_adamw_matches_torch():
    torch = pytest.importorskip("torch")
    params, grads = _random_problem(np)
    tparams = {k: torch.nn.Parameter(torch.from_numpy(p.copy())) for k, p in params.items()}
    topt = torch.optim.AdamW(list(tparams.values()), lr=1e-2, betas=(0.9, 0.999), eps=1e-8,
                             weight_decay=0.1)
    opt = AdamW(params, lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    for g in grads[:5]:
        for k, tp in tparams.items():
            tp.grad = torch.from_numpy(g[k].copy())
        topt.step()
        opt.step(params, g)
    for k, tp in tparams.items():
        err = np.abs(params[k] - tp.detach().numpy()).max()
        print(f"{k}: max |ours - torch| after 5 steps = {err:.2e}")
        assert err < 1e-6


def test_adamw_and_ema_in_cache_blocks_equal_one_piece():
    """A big contiguous parameter is updated in cache-sized blocks (backend.cache_blocks), a
    Fortran-ordered copy in one piece: three AdamW steps with weight decay and EMA updates must
    leave the same bits in both, remainder block included."""
    from minidit.backend import CACHE_BLOCK
    rng = np.random.default_rng(0)
    shape = (300, 500)
    assert np.prod(shape) > 2 * CACHE_BLOCK and np.prod(shape) % CACHE_BLOCK
    p_c = {"w": rng.standard_normal(shape).astype(np.float32)}
    p_f = {"w": np.asfortranarray(p_c["w"])}
    opt_c, opt_f = AdamW(p_c, lr=1e-2, weight_decay=0.1), AdamW(p_f, lr=1e-2, weight_decay=0.1)
    ema_c, ema_f = init_ema(p_c), init_ema(p_f)
    assert p_c["w"].flags.c_contiguous and not p_f["w"].flags.c_contiguous
    assert not opt_f.m["w"].flags.c_contiguous  # zeros_like keeps the layout: one piece
    for _ in range(3):
        g = rng.standard_normal(shape).astype(np.float32)
        opt_c.step(p_c, {"w": g})
        opt_f.step(p_f, {"w": np.asfortranarray(g)})
        ema_update(ema_c, p_c, 0.9)
        ema_update(ema_f, p_f, 0.9)
    np.testing.assert_array_equal(p_c["w"], p_f["w"])
    np.testing.assert_array_equal(opt_c.v["w"], opt_f.v["w"])
    np.testing.assert_array_equal(ema_c["w"], ema_f["w"])
    assert not np.array_equal(p_c["w"], ema_c["w"])  # the steps did move the weights


def test_lr_at_warmup_and_decays():
    from minidit.training.optim import lr_at
    assert [lr_at(s, 1.0, 10) for s in (1, 5, 10)] == [1.0, 1.0, 1.0]  # the paper's constant rate
    assert [lr_at(s, 2.0, 10, warmup=4) for s in (1, 2, 4)] == [0.5, 1.0, 2.0]
    assert lr_at(4, 2.0, 10, 4, "cosine") == 2.0 and lr_at(10, 2.0, 10, 4, "cosine") == pytest.approx(0.0)
    assert lr_at(7, 2.0, 10, 4, "cosine") == pytest.approx(1.0)  # half-way down the half cosine
    assert lr_at(7, 2.0, 10, 4, "linear", final_fraction=0.5) == pytest.approx(1.5)
    assert lr_at(10, 2.0, 10, 4, "linear", final_fraction=0.5) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown learning-rate schedule 'step'"):
        lr_at(1, 1.0, 10, schedule="step")


# Muon ---------------------------------------------------------------------------------------------

def _newton_schulz64(g, steps=5):
    """The orthogonalising iteration written out again in float64, for the expected values."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = np.asarray(g, dtype=np.float64)
    x = x / (np.sqrt((x * x).sum()) + 1e-7)
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


@pytest.mark.parametrize("shape", [(24, 72), (72, 24), (40, 40)])
def test_orthogonalize_keeps_the_singular_vectors_and_evens_the_values(xp, shape):
    """orthogonalize(g) = U f(S) V^T for g = U S V^T: the same singular vectors; values within a
    hundredfold of the largest all end near 1 (five steps leave them in about [0.7, 1.2]), and
    smaller ones are raised by a large factor."""
    rng = np.random.default_rng(1)
    u, _ = np.linalg.qr(rng.standard_normal((shape[0], shape[0])))
    v, _ = np.linalg.qr(rng.standard_normal((shape[1], shape[1])))
    k = min(shape)
    for spread in (1e-2, 1e-3):
        s = np.geomspace(1.0, spread, k)
        g = (u[:, :k] * s) @ v[:, :k].T
        o = to_numpy(orthogonalize(xp.asarray(g.astype(np.float32)))).astype(np.float64)
        assert o.shape == shape
        d = u[:, :k].T @ o @ v[:, :k]  # o in g's singular bases: diagonal if the vectors are kept
        off = d - np.diag(np.diag(d))
        assert np.abs(off).max() < 1e-3, np.abs(off).max()
        f = np.diag(d)
        assert f.max() < 1.25, f
        if spread == 1e-2:
            assert f.min() > 0.6, f
        else:  # the smallest value, 1e-3 / |g| of the normalised matrix, is raised about a hundredfold or more
            assert f.min() > 100 * s.min() / np.sqrt((s * s).sum()), f
        np.testing.assert_allclose(o, _newton_schulz64(g), atol=2e-4)  # float32 against float64


def test_muon_splits_the_parameters_and_steps_as_written(xp):
    """The blocks' weight matrices get Muon (momentum, Nesterov, orthogonalised, scaled by
    0.2 sqrt(max side), decoupled decay); biases, the adaLN regression and weights outside the
    blocks get AdamW, to the bit."""
    rng = np.random.default_rng(2)
    shapes = {"blocks.0.mlp.fc1.w": (8, 32), "blocks.0.mlp.fc1.b": (32,), "blocks.0.adaLN_modulation.1.w": (8, 48),
              "x_embedder.proj.w": (4, 8), "blocks.1.attn.proj.w": (8, 8)}
    p0 = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    grads = [{k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()} for _ in range(3)]
    assert muon_matrices(p0) == ["blocks.0.mlp.fc1.w", "blocks.1.attn.proj.w"]
    lr, wd, mu = 0.02, 0.1, 0.95
    params = {k: xp.asarray(p.copy()) for k, p in p0.items()}
    twin = {k: xp.asarray(p.copy()) for k, p in p0.items()}
    opt, adam = Muon(params, lr=lr, weight_decay=wd), AdamW(twin, lr=lr, weight_decay=wd)
    want = {k: p0[k].astype(np.float64) for k in muon_matrices(p0)}
    mom = {k: np.zeros_like(w) for k, w in want.items()}
    for g in grads:
        opt.step(params, {k: xp.asarray(a) for k, a in g.items()})
        adam.step(twin, {k: xp.asarray(a) for k, a in g.items()})
        for k in want:
            mom[k] = mu * mom[k] + g[k]
            o = _newton_schulz64(g[k] + mu * mom[k])
            want[k] = want[k] * (1 - lr * wd) - lr * 0.2 * np.sqrt(max(o.shape)) * o
    for k in shapes:
        got = to_numpy(params[k])
        assert got.dtype == np.float32
        if k in want:
            np.testing.assert_allclose(got, want[k], atol=3e-5)
            np.testing.assert_allclose(to_numpy(opt.m[k]), mom[k], rtol=1e-5, atol=1e-6)
            assert not np.any(to_numpy(opt.v[k]))  # Muon's matrices leave v unused
        else:
            np.testing.assert_array_equal(got, to_numpy(twin[k]))


def test_muon_update_has_the_size_of_an_adamw_update():
    """The 0.2 sqrt(max side) factor: Muon's first step has about the root-mean-square size of
    AdamW's (whose first step moves every entry by lr, so its rms is lr x 1)."""
    rng = np.random.default_rng(3)
    for shape in [(128, 384), (512, 128)]:
        params = {"blocks.0.mlp.fc2.w": np.zeros(shape, np.float32)}
        Muon(params, lr=1.0).step(params, {"blocks.0.mlp.fc2.w": rng.standard_normal(shape).astype(np.float32)})
        rms = float(np.sqrt(np.mean(params["blocks.0.mlp.fc2.w"].astype(np.float64) ** 2)))
        assert 0.12 < rms < 0.3, (shape, rms)  # 0.2 x the rms of a near-orthogonal matrix's entries x sqrt(max side)


def test_muon_state_round_trip_continues_identically(xp):
    params, grads = _random_problem(xp)
    opt = Muon(params, lr=1e-2, weight_decay=0.01)
    assert opt.matrices == {"blocks.0.attn.qkv.w"}
    for g in grads[:3]:
        opt.step(params, g)
    saved = {k: to_numpy(p).copy() for k, p in params.items()}
    state = opt.state_dict()
    for g in grads[3:]:
        opt.step(params, g)
    resumed = {k: xp.asarray(p) for k, p in saved.items()}
    opt2 = Muon(resumed)
    opt2.load_state_dict({"step": state["step"], "m": state["m"], "v": state["v"]})  # what a checkpoint keeps
    opt2.lr, opt2.weight_decay = 1e-2, 0.01  # the train command sets them from its flags
    for g in grads[3:]:
        opt2.step(resumed, g)
    for k in params:
        np.testing.assert_array_equal(to_numpy(resumed[k]), to_numpy(params[k]))
