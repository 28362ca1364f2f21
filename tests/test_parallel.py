"""Data-parallel training threads (minidit/training/parallel.py): the shards cover the batch, the summed
shard gradients equal the whole batch's gradient, and a run with workers is deterministic."""
import numpy as np
import pytest

from minidit.backend import Generator
from minidit.diffusion import create_diffusion
from minidit.model import DiT_models, init_params
from minidit.training.optim import AdamW, init_ema
from minidit.training.parallel import DataParallel, resolve_workers, shards
from minidit.commands.train import train_step


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
    from minidit.commands.sample import generate
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
    from minidit.training.optim import ema_update
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


def test_gradient_sum_adds_in_shard_order_whatever_the_timing():
    """Workers hand over their gradients in any order of arrival; the total is always
    ((g0 + g1) + g2), bit for bit, and the later workers' arrays are not kept."""
    import threading
    import time
    from minidit.training.parallel import GradientSum
    rng = np.random.default_rng(0)
    # float32 values of very different sizes, so that another order of addition rounds differently
    g = [{"w": (rng.standard_normal(1000) * 10.0 ** (3 * i)).astype(np.float32)} for i in range(3)]
    expected = (g[0]["w"] + g[1]["w"]) + g[2]["w"]
    assert not np.array_equal(expected, (g[2]["w"] + g[1]["w"]) + g[0]["w"])
    total = GradientSum()
    mine = [{"w": a["w"].copy()} for a in g]
    threads = [threading.Thread(target=total.add, args=(s, mine[s])) for s in (2, 1, 0)]
    for th in threads:  # the last shard arrives first and must wait for the others
        th.start()
        time.sleep(0.05)
    for th in threads:
        th.join(timeout=10)
    assert not any(th.is_alive() for th in threads)
    np.testing.assert_array_equal(total.total["w"], expected)
    assert total.total["w"] is mine[0]["w"]  # worker 0's array became the total


def test_gradient_sum_releases_waiting_workers_when_one_fails():
    import threading
    from minidit.training.parallel import GradientSum
    total, errors = GradientSum(), []

    def second_worker():
        try:
            total.add(1, {"w": np.ones(3)})  # waits for worker 0, which never comes
        except RuntimeError as e:
            errors.append(str(e))

    th = threading.Thread(target=second_worker)
    th.start()
    total.fail()  # what train_step does when a worker raises
    th.join(timeout=10)
    assert not th.is_alive() and errors == ["another data-parallel worker failed"]


def test_a_failing_worker_raises_instead_of_hanging():
    """Worker 0 fails on a bad class id; worker 1, which would wait for worker 0's gradients,
    must be released, and the step must raise (not hang)."""
    import concurrent.futures
    cfg = DiT_models["minidit-Tiny/4"](depth=1, hidden_size=32, num_heads=2, input_size=8)
    params = init_params(cfg, seed=1)
    x = np.zeros((4, 3, 8, 8), np.float32)
    y = np.array([10 ** 6, 0, 1, 2])  # only the first shard holds the bad id

    def step():
        with DataParallel(2) as par:
            train_step(params, init_ema(params), AdamW(params), cfg, create_diffusion(""), x, y,
                       Generator(0), 0.9, par)

    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        with pytest.raises(ValueError, match="class id 1000000 outside"):
            ex.submit(step).result(timeout=60)
