"""Data-parallel training threads (minidit/parallel.py): the shards cover the batch, the summed
shard gradients equal the whole batch's gradient, and a run with workers is deterministic."""
import numpy as np
import pytest

from minidit.backend import Generator
from minidit.diffusion import create_diffusion
from minidit.model import DiT_models, init_params
from minidit.optim import AdamW, init_ema
from minidit.parallel import DataParallel, resolve_workers, shards
from minidit.train import train_step


def test_shards_cover_the_batch_once_in_order():
    for n, w in [(8, 2), (7, 2), (10, 3), (3, 8), (1, 1)]:
        parts = shards(n, w)
        idx = np.concatenate([np.arange(n)[s] for s in parts])
        assert np.array_equal(idx, np.arange(n)) and len(parts) == min(n, w)
        sizes = [s.stop - s.start for s in parts]
        assert max(sizes) - min(sizes) <= 1


def test_resolve_workers():
    assert resolve_workers(3, batch_size=64) == 3
    assert resolve_workers(4, batch_size=2) == 2          # never more workers than images
    assert resolve_workers(4, batch_size=64, device="gpu") == 1
    assert 1 <= resolve_workers(0, batch_size=64) <= 8    # one per CPU
    with pytest.raises(ValueError, match="workers must be >= 0"):
        resolve_workers(-1, batch_size=8)


def _step(workers, seed=0):
    """One float64 training step of a small model, all zero-initialised weights randomised."""
    cfg = DiT_models["minidit-Tiny/4"](depth=2, hidden_size=32, num_heads=2, input_size=8)
    params = init_params(cfg, seed=1, dtype=np.float64)
    r = np.random.default_rng(2)
    for v in params.values():
        v += 0.05 * r.standard_normal(v.shape)
    ema, opt = init_ema(params), AdamW(params, lr=1e-3)
    x = r.uniform(-1, 1, (6, 3, 8, 8))
    y = r.integers(0, 10, 6)
    with DataParallel(workers) as par:
        stats = train_step(params, ema, opt, cfg, create_diffusion(""), x, y, Generator(seed), 0.9, par)
    return stats, params, opt


def test_sharded_step_equals_the_whole_batch_step():
    s1, p1, o1 = _step(1)
    for workers in (2, 3):
        s2, p2, o2 = _step(workers)
        for k in ("loss", "mse", "vb", "grad_norm"):
            assert s2[k] == pytest.approx(s1[k], rel=1e-12, abs=1e-15), k
        for k in p1:  # Adam's first moment after one step is (1 - beta1) * gradient
            np.testing.assert_allclose(o2.m[k], o1.m[k], rtol=1e-10, atol=1e-16, err_msg=k)
            np.testing.assert_allclose(p2[k], p1[k], rtol=1e-12, atol=1e-15, err_msg=k)


def test_workers_are_deterministic():
    _, a, _ = _step(2, seed=5)
    _, b, _ = _step(2, seed=5)
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def test_sampling_with_workers_matches_one_piece():
    from minidit.sample import generate
    cfg = DiT_models["minidit-Tiny/4"](depth=1, hidden_size=32, num_heads=2, input_size=8)
    params = init_params(cfg, seed=0, dtype=np.float64)
    r = np.random.default_rng(0)
    for v in params.values():
        v += 0.05 * r.standard_normal(v.shape)
    labels = [0, 3, 5, 9, 2]
    one = generate(params, cfg, labels, 3, "ddpm", 2.0, seed=1, workers=1)
    three = generate(params, cfg, labels, 3, "ddpm", 2.0, seed=1, workers=3)
    np.testing.assert_allclose(three, one, rtol=1e-5, atol=1e-6)
    assert np.abs(one).max() > 0.1


def test_optimizer_and_ema_on_workers_give_the_same_numbers():
    from minidit.optim import ema_update
    r = np.random.default_rng(0)
    shapes = {"a": (5, 3), "b": (7,), "c": (2, 2, 2), "d": (11, 4)}
    p1 = {k: r.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    p2 = {k: v.copy() for k, v in p1.items()}
    e1, e2 = init_ema(p1), init_ema(p2)
    o1, o2 = AdamW(p1, lr=1e-2, weight_decay=0.1), AdamW(p2, lr=1e-2, weight_decay=0.1)
    with DataParallel(3) as par:
        for _ in range(3):
            g = {k: r.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
            o1.step(p1, g)
            o2.step(p2, g, par)
            ema_update(e1, p1, 0.9)
            ema_update(e2, p2, 0.9, par)
    for k in shapes:
        assert np.array_equal(p1[k], p2[k]) and np.array_equal(e1[k], e2[k]) and not np.array_equal(p1[k], e1[k])
