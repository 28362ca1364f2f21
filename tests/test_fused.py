"""The fused GPU kernels (minidit.fused) against the NumPy forms they stand behind: the same
numbers to float32 rounding, for every kernel, on the GPU path (the CuPy stand-in in CI, where
cupy.fuse runs the kernel's Python body; CuPy's compiled kernels on a GPU). And what fusing
saves: kernel launches per Tiny/4 training step, counted on the stand-in."""
import numpy as np
import pytest

from minidit import backend, fused
from minidit.backend import Generator, to_numpy
from minidit.diffusion import create_diffusion
from minidit.layers import (gated_residual_forward, gelu_backward, gelu_forward, layernorm_backward,
                            layernorm_forward, modulate_forward, softmax_backward, softmax_forward)
from minidit.model import get_config, init_params
from minidit.training.optim import AdamW, ema_update, init_ema
from minidit.training.parallel import DataParallel
from minidit.commands.train import train_step

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not backend.gpu_available(), reason="no CuPy (nor its stand-in)")]
F32 = dict(rtol=2e-6, atol=2e-6)  # a few float32 roundings


@pytest.fixture
def both(monkeypatch):
    """run(fn) -> (fused result, unfused result) of fn(), on GPU arrays, as host arrays."""
    def run(fn):
        monkeypatch.setenv(fused.ENV_VAR, "1")
        a = to_numpy(fn())
        monkeypatch.setenv(fused.ENV_VAR, "0")
        b = to_numpy(fn())
        monkeypatch.setenv(fused.ENV_VAR, "1")
        return a, b
    return run


def _dev(rng, *shape, scale=1.0):
    return backend.get_xp("gpu").asarray((scale * rng.standard_normal(shape)).astype(np.float32))


def _close(pair, name):
    a, b = pair
    for x, y in (zip(a, b) if isinstance(a, (tuple, list)) else [(a, b)]):
        if y is not None:
            np.testing.assert_allclose(x, y, err_msg=name, **F32)


def test_layer_kernels_match_their_numpy_forms(both):
    rng = np.random.default_rng(0)
    x, d = _dev(rng, 2, 5, 8, scale=2.0), _dev(rng, 2, 5, 8)
    g, b = _dev(rng, 8), _dev(rng, 8)
    shift, scale, gate = _dev(rng, 2, 8), _dev(rng, 2, 8), _dev(rng, 2, 8)
    assert fused.enabled(x)
    _close(both(lambda: gelu_forward(x)[0]), "gelu")
    _close(both(lambda: gelu_backward(d, x)), "gelu backward")
    p, c = softmax_forward(x)
    _close(both(lambda: softmax_backward(d, c)), "softmax backward")
    for gamma, beta in ((None, None), (g, b)):
        _close(both(lambda: layernorm_forward(x, gamma, beta, eps=1e-6)[0]), "layernorm")
        _close(both(lambda: layernorm_forward(x, gamma, beta)[1].xhat), "layernorm cache")
        _close(both(lambda: layernorm_backward(d, layernorm_forward(x, gamma, beta)[1])), "layernorm backward")
    _close(both(lambda: modulate_forward(x, shift, scale)[0]), "modulate")
    _close(both(lambda: gated_residual_forward(x, d, gate)[0]), "gated residual")


def test_optimiser_kernels_match_their_numpy_forms(both):
    shapes = {"a": (64, 3), "b": (7,)}

    def adamw_steps():
        params = {k: _dev(np.random.default_rng(2), *s) for k, s in shapes.items()}
        ema = init_ema(params)
        opt = AdamW(params, lr=3e-3, weight_decay=0.1)
        for i in range(4):
            grads = {k: _dev(np.random.default_rng(10 + i), *s) for k, s in shapes.items()}
            opt.step(params, grads)
            ema_update(ema, params, 0.9)
        return [params["a"], params["b"], opt.m["a"], opt.v["a"], ema["a"], ema["b"]]

    _close(both(adamw_steps), "AdamW and EMA")


def _kernels_per_step(cupy, monkeypatch, on):
    monkeypatch.setenv(fused.ENV_VAR, "1" if on else "0")
    cfg = get_config("minidit-Tiny/4", input_size=32)
    params = init_params(cfg, seed=0, device="gpu")
    ema, opt, diffusion = init_ema(params), AdamW(params, lr=1e-4), create_diffusion("")
    rng = Generator(0, device="gpu")
    x, y = rng.normal((32, 3, 32, 32), device="gpu"), rng.integers(0, 10, (32,), device="gpu")
    with DataParallel(1) as parallel:
        train_step(params, ema, opt, cfg, diffusion, x, y, rng, 0.99, parallel)
        cupy.reset_counts()
        train_step(params, ema, opt, cfg, diffusion, x, y, rng, 0.99, parallel)
    return sum(cupy.counts["kernel"].values())


def test_fusing_cuts_the_kernel_launches_of_a_training_step(standin, monkeypatch, capsys):
    unfused = _kernels_per_step(standin, monkeypatch, on=False)
    with_fused = _kernels_per_step(standin, monkeypatch, on=True)
    with capsys.disabled():
        print(f"\n[stand-in] Tiny/4 b32 training step: {unfused} kernel launches unfused, {with_fused} fused "
              f"({with_fused / unfused:.2f}x)")
    assert with_fused < 0.75 * unfused


def test_a_fused_function_takes_positional_arguments_only(standin):
    """As CuPy's fused functions do (Fusion.__call__(self, *args)): the stand-in refuses keywords,
    so a call that only the stand-in would accept cannot pass here."""
    from minidit import fused
    K = fused.kernels(standin)
    x = standin.ones((2, 3), dtype=standin.float32)
    assert K["gated"](x, x, x).shape == (2, 3)
    with pytest.raises(TypeError, match="keyword"):
        K["gated"](x, gate=x, branch=x)
