"""The GPU path end to end: the commands with --device gpu (on the strict CuPy stand-in in CI, on
CuPy with a GPU elsewhere) give the same results as on the CPU, resume bit for bit, accept host
or device labels and timesteps, and a training or sampling step makes few device-to-host syncs."""
import json

import numpy as np
import pytest

from minidit import backend
from minidit.backend import Generator, to_device, to_numpy
from minidit.diffusion import create_diffusion
from minidit.guidance import make_model_fn
from minidit.model import dit_forward, get_config, init_params
from minidit.commands import sample, train
from minidit.training.checkpoint import load_checkpoint
from minidit.training.optim import AdamW, init_ema
from minidit.training.parallel import DataParallel

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not backend.gpu_available(), reason="no CuPy (nor its stand-in)")]
TINY = ["--model", "minidit-Tiny/4", "--depth", "1", "--hidden-size", "16", "--num-heads", "2",
        "--image-size", "8", "--num-images", "32", "--batch-size", "8", "--lr", "1e-3", "--ema-decay", "0.9",
        "--log-every", "1", "--sample-steps", "2", "--no-progress"]


@pytest.fixture(autouse=True)
def default_device_restored():
    yield
    backend.set_device("cpu")


def _weights(path):
    return load_checkpoint(path)[1]


def test_training_on_the_gpu_resumes_bit_for_bit_and_matches_the_cpu(tmp_path):
    def run(out, *extra):
        train.run(train.build_parser().parse_args(TINY + ["--out", str(tmp_path / out), *extra]), log=lambda *a: None)

    run("gpu", "--device", "gpu", "--steps", "6", "--ckpt-every", "6")
    run("gpu_resumed", "--device", "gpu", "--steps", "3", "--ckpt-every", "3")
    run("gpu_resumed", "--device", "gpu", "--steps", "6", "--ckpt-every", "3", "--resume")
    run("cpu", "--device", "cpu", "--steps", "6", "--ckpt-every", "6", "--workers", "1")
    a = _weights(tmp_path / "gpu" / "checkpoints" / "step_0000006.npz")
    b = _weights(tmp_path / "gpu_resumed" / "checkpoints" / "step_0000006.npz")
    c = _weights(tmp_path / "cpu" / "checkpoints" / "step_0000006.npz")
    for group in ("model", "ema", "opt_m", "opt_v"):
        for k in a[group]:
            assert np.array_equal(a[group][k], b[group][k]), (group, k)  # resumed on the device: to the bit
            # the same run as on the CPU, to float32 rounding (the GPU runs fused kernels, minidit.fused)
            np.testing.assert_allclose(a[group][k], c[group][k], rtol=1e-3, atol=1e-5, err_msg=f"{group}/{k}")


def test_the_commands_run_on_the_gpu(tmp_path):
    from minidit.evaluation import evaluate, experiments
    from minidit.latent import train_vae
    vae = ["--image-size", "8", "--num-images", "32", "--batch-size", "8", "--base-channels", "4",
           "--num-groups", "2", "--ch-mult", "1,2", "--z-channels", "2", "--steps", "2", "--scale-images", "16",
           "--eval-images", "8", "--no-progress", "--device", "gpu"]
    assert train_vae.main(vae + ["--out", str(tmp_path / "vae"), "--ckpt-every", "1", "--steps", "1"]) == 0
    assert train_vae.main(vae + ["--out", str(tmp_path / "vae"), "--resume"]) == 0
    v = ["--vae", str(tmp_path / "vae" / "vae.npz"), "--patch-size", "2", "--device", "gpu"]
    assert train.main(TINY + ["--out", str(tmp_path / "latent"), "--steps", "2", *v]) == 0
    for ckpt, name in ((tmp_path / "latent", "latent"), ("minidit_shapes32.npz", "pixel")):
        assert sample.main(["--ckpt", str(ckpt), "--classes", "0,1", "--per-class", "2", "--steps", "2",
                            "--device", "gpu", "--out", str(tmp_path / f"{name}.png"),
                            "--npz", str(tmp_path / f"{name}.npz"), "--no-progress"]) == 0
    assert evaluate.main(["samples", "--samples", str(tmp_path / "pixel.npz"), "--device", "gpu"]) == 0
    assert experiments.main(["sampling-compute", "--fast", "--device", "gpu", "--out", str(tmp_path / "exp")]) == 0
    assert json.loads((tmp_path / "exp" / "sampling-compute.json").read_text())["runs"]


def test_host_or_device_labels_and_timesteps():
    """The rule: public functions take t and y on the host or on the weights' device."""
    cfg = get_config("minidit-Tiny/4", depth=1, hidden_size=16, num_heads=2, input_size=8)
    P = init_params(cfg, seed=0, device="gpu")
    P = {k: v + 0.01 for k, v in P.items()}
    x = backend.get_xp("gpu").asarray(np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32))
    t, y = np.array([3, 700]), np.array([1, 9])
    ref = to_numpy(dit_forward(P, x, to_device(t, "gpu"), to_device(y, "gpu"), cfg)[0])
    np.testing.assert_array_equal(to_numpy(dit_forward(P, x, t, y, cfg)[0]), ref)
    from minidit.layers import timestep_embedder_forward
    te = [P[f"t_embedder.mlp.{i}.{w}"] for i in (0, 2) for w in "wb"]
    np.testing.assert_array_equal(to_numpy(timestep_embedder_forward(t, *te)[0]),
                                  to_numpy(timestep_embedder_forward(to_device(t, "gpu"), *te)[0]))
    np.testing.assert_array_equal(to_numpy(make_model_fn(P, cfg, y, 4.0)(x, t)),
                                  to_numpy(make_model_fn(P, cfg, to_device(y, "gpu"), 4.0)(x, to_device(t, "gpu"))))


def _syncs(cupy):
    return sum(cupy.counts["sync"].values())


def test_few_syncs_per_training_and_sampling_step(standin, capsys):
    cupy = standin
    cfg = get_config("minidit-Tiny/4", input_size=32)
    params = init_params(cfg, seed=0, device="gpu")
    ema, opt, diffusion = init_ema(params), AdamW(params, lr=1e-4), create_diffusion("")
    rng = Generator(0, device="gpu")
    x = rng.normal((8, 3, 32, 32), device="gpu")
    y = rng.integers(0, 10, (8,), device="gpu")
    with DataParallel(1) as parallel:
        train.train_step(params, ema, opt, cfg, diffusion, x, y, rng, 0.99, parallel)  # warm-up
        cupy.reset_counts()
        train.train_step(params, ema, opt, cfg, diffusion, x, y, rng, 0.99, parallel)
    step_syncs, step_sites = _syncs(cupy), dict(cupy.counts["sync"])
    step_copies = dict(cupy.counts["to_device"])
    labels = np.arange(10)
    cupy.reset_counts()
    sample.generate(params, cfg, labels, num_steps=5, sampler="ddpm", guidance_scale=4.0, device="gpu", workers=1)
    sample_syncs = _syncs(cupy) / 5
    with capsys.disabled():
        print(f"\n[stand-in] Tiny/4 training step: {step_syncs} syncs {step_sites}, host-to-device copies "
              f"{sum(step_copies.values())} {step_copies}; sampling: {sample_syncs:.1f} syncs per step")
    assert step_syncs <= 3, step_sites
    assert sample_syncs <= 1, dict(cupy.counts["sync"])
