"""The released-model readers and the SD VAE, checked against code no one here wrote (issue 16).

Tiny randomly initialised diffusers models (DiTTransformer2DModel, AutoencoderKL), built offline
from a config, are saved in every format users download (.safetensors, .bin, an official-style
.pt from torch.save); minidit reads them without torch and must compute what diffusers computes.
The tests that need torch and diffusers skip without the [reference] extra; the ones that check
the closed-list unpickler and the band convolution run everywhere.
"""
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from minidit.backend import Generator
from minidit.latent.sd_vae import SDVAEConfig, normalise_names, param_names
from minidit.pretrained.vae import load_sd_vae
from minidit.layers.conv2d import conv2d_forward, conv2d_infer
from minidit.model import DiTConfig, dit_apply
from minidit.official import to_official
from minidit.pretrained.dit import load_released_dit
from minidit.pretrained.torchfile import UnsafeFileError, load_torch_file
from minidit.pretrained.weights import read_state_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


pytestmark = pytest.mark.xdist_group("pretrained")  # its module-scoped fixtures are built once, on one worker

def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


# ---------------------------------------------------------------------------------------------
# everywhere: the band convolution and the unpickler's refusal
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stride,pad,band", [(1, 1, 1 << 30), (1, 1, 1), (2, (0, 1, 0, 1), 700), (1, 0, 5000)])
def test_conv2d_infer_equals_the_cached_forward(stride, pad, band):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 9, 8))
    w = rng.standard_normal((5, 3, 3, 3))
    b = rng.standard_normal(5)
    if isinstance(pad, tuple):  # pad right and bottom by hand, then a plain stride-2 conv
        ref, _ = conv2d_forward(np.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1))), w, b, stride, 0)
    else:
        ref, _ = conv2d_forward(x, w, b, stride, pad)
    out = conv2d_infer(x, w, b, stride, pad, band_bytes=band)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _zip_with_pickle(path, payload):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", payload)
        z.writestr("archive/version", "3\n")


def test_unpickler_refuses_os_system(tmp_path):
    evil = _Evil()
    evil.marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    _zip_with_pickle(path, pickle.dumps({"w": evil}, protocol=2))
    with pytest.raises(UnsafeFileError, match=r"system.*refusing"):
        load_torch_file(path)
    assert not evil.marker.exists(), "the pickle's code ran"
    with pytest.raises(UnsafeFileError):  # the weight-file entry points refuse it too
        read_state_dict(path)


def test_unpickler_refuses_other_globals_and_reads_plain_containers(tmp_path):
    path = tmp_path / "other.pt"
    _zip_with_pickle(path, pickle.dumps({"x": np.zeros(2)}, protocol=2))  # numpy's own reconstructor
    with pytest.raises(UnsafeFileError, match="numpy"):
        load_torch_file(path)
    _zip_with_pickle(path, pickle.dumps({"a": [1, 2.5, "s"], "b": (None, True)}, protocol=2))
    assert load_torch_file(path) == {"a": [1, 2.5, "s"], "b": (None, True)}


def test_not_a_zip_and_missing_file(tmp_path):
    p = tmp_path / "x.pt"
    p.write_bytes(b"\x80\x02}q\x00.")  # a bare pickle: the pre-1.6 format, or not torch at all
    with pytest.raises(ValueError, match="not a PyTorch zip checkpoint"):
        load_torch_file(p)
    with pytest.raises(FileNotFoundError):
        load_torch_file(tmp_path / "absent.pt")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00")
    with pytest.raises(ValueError, match="safetensors"):
        read_state_dict(bad)


def test_sd_vae_names_cover_the_config_and_old_spelling_maps():
    cfg = SDVAEConfig(block_out_channels=(32, 64), layers_per_block=1)
    names = param_names(cfg)
    assert len(names) == len(set(names))
    assert "decoder.up_blocks.0.resnets.1.conv2.weight" in names  # one more resnet per decoder level
    assert "decoder.up_blocks.1.resnets.0.conv_shortcut.weight" in names
    old = {"encoder.mid_block.attentions.0.query.weight": np.zeros((64, 64, 1, 1)),
           "encoder.mid_block.attentions.0.proj_attn.bias": np.zeros(64)}
    new = normalise_names(old)
    assert set(new) == {"encoder.mid_block.attentions.0.to_q.weight", "encoder.mid_block.attentions.0.to_out.0.bias"}
    assert new["encoder.mid_block.attentions.0.to_q.weight"].shape == (64, 64)


# ---------------------------------------------------------------------------------------------
# against diffusers (the [reference] extra)
# ---------------------------------------------------------------------------------------------
torch = pytest.importorskip("torch", reason="the [reference] extra (torch, diffusers) is not installed")
diffusers = pytest.importorskip("diffusers", reason="the [reference] extra (diffusers) is not installed")

TINY_DIT = dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=2,
                patch_size=2, sample_size=8, num_embeds_ada_norm=10)
TINY_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64), layers_per_block=1,
                norm_num_groups=32, sample_size=32, down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2)


def _randomise(module, seed):
    """Every weight random (diffusers, like DiT, zero-initialises some): nothing checks nothing."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            scale = 1.0 if ("norm" in name and name.endswith("weight")) else 0.2
            base = 1.0 if scale == 1.0 else 0.0
            p.copy_(base + scale * torch.randn(p.shape, generator=g) * (0.3 if base else 1.0))
    return module.eval()


@pytest.fixture(scope="module")
def tiny_dit():
    from diffusers import DiTTransformer2DModel
    torch.manual_seed(0)
    dit = _randomise(DiTTransformer2DModel(**TINY_DIT), 1)
    # diffusers gives every block its own timestep and label embedders; the released conversion
    # copies the one official pair into all of them, so the tiny model does the same
    with torch.no_grad():
        for blk in dit.transformer_blocks[1:]:
            blk.norm1.emb.load_state_dict(dit.transformer_blocks[0].norm1.emb.state_dict())
    return dit


@pytest.fixture(scope="module")
def tiny_vae():
    from diffusers import AutoencoderKL
    torch.manual_seed(0)
    return _randomise(AutoencoderKL(**TINY_VAE), 2)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_dit, tiny_vae):
    """A diffusers pipeline folder in each weight format, an official-style .pt and old-spelling VAE files."""
    root = tmp_path_factory.mktemp("released")
    for fmt, safe in (("safetensors", True), ("bin", False)):
        tiny_dit.save_pretrained(root / fmt / "transformer", safe_serialization=safe)
        tiny_vae.save_pretrained(root / fmt / "vae", safe_serialization=safe)
    params, cfg, _ = load_released_dit(root / "safetensors")
    official = {k: torch.from_numpy(v.copy()) for k, v in to_official(params, cfg).items()}
    torch.save(official, root / "DiT-tiny.pt")
    old = {}
    for k, v in tiny_vae.state_dict().items():  # the attention's old names, as 1x1 conv kernels
        for new, was in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
            if f".attentions.0.{new}." in k:
                k = k.replace(f".attentions.0.{new}.", f".attentions.0.{was}.")
                v = v[..., None, None] if v.ndim == 2 else v
        old[k] = v.clone()
    (root / "old_vae").mkdir()
    torch.save(old, root / "old_vae" / "diffusion_pytorch_model.bin")  # no config.json: read off shapes
    return root


def _patched_for_official_math(dit):
    """diffusers' two deviations from the official DiT (docs/paper.md §6.2), undone for the comparison."""
    for blk in dit.transformer_blocks:
        blk.norm1.emb.time_proj.downscale_freq_shift = 0
        blk.norm3.eps = 1e-6
    return dit


def _diffusers_forward(dit, x, t, y):
    with torch.no_grad():
        return dit(torch.from_numpy(x), timestep=torch.from_numpy(t), class_labels=torch.from_numpy(y)).sample.numpy()


@pytest.mark.parametrize("fmt", ["safetensors", "bin", "transformer-dir", "official-pt"])
def test_dit_forward_matches_diffusers(saved, tiny_dit, fmt):
    path = {"safetensors": saved / "safetensors", "bin": saved / "bin",
            "transformer-dir": saved / "bin" / "transformer", "official-pt": saved / "DiT-tiny.pt"}[fmt]
    params, cfg, source = load_released_dit(path, num_heads=2 if fmt == "official-pt" else None)
    assert cfg == DiTConfig(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=2,
                            num_classes=10)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 4, 8, 8)).astype(np.float32)
    t = np.array([0, 517, 999])
    y = np.array([1, 9, 10])  # 10: the null class of guidance
    ours = np.asarray(dit_apply(params, x, t, y, cfg))
    ref = _diffusers_forward(_patched_for_official_math(tiny_dit), x, t, y)
    err = rel(ours, ref)
    print(f"\nDiT forward vs diffusers ({fmt}, {source.split(' ')[0]}): max rel error {err:.2e}")
    assert err < 2e-5


def test_diffusers_math_really_differs_unpatched(saved):
    """The two deviations matter: without the patch the outputs differ well beyond rounding."""
    from diffusers import DiTTransformer2DModel
    raw = DiTTransformer2DModel.from_pretrained(saved / "bin" / "transformer").eval()
    params, cfg, _ = load_released_dit(saved / "bin")
    x = np.random.default_rng(4).standard_normal((2, 4, 8, 8)).astype(np.float32)
    t, y = np.array([999, 400]), np.array([2, 3])
    assert rel(np.asarray(dit_apply(params, x, t, y, cfg)), _diffusers_forward(raw, x, t, y)) > 1e-3


def test_official_pt_round_trip_exact(saved):
    a, cfg_a, _ = load_released_dit(saved / "safetensors")
    b, cfg_b, source = load_released_dit(saved / "DiT-tiny.pt", num_heads=2)  # not visible in the weights
    assert source.startswith("official") and cfg_a == cfg_b
    assert all(v.flags.writeable and v.flags.c_contiguous for v in b.values())  # copies, not views of the file
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.parametrize("fmt", ["safetensors", "bin", "old"])
def test_sd_vae_decode_and_encode_match_diffusers(saved, tiny_vae, fmt):
    vae = load_sd_vae({"safetensors": saved / "safetensors", "bin": saved / "bin" / "vae",
                       "old": saved / "old_vae"}[fmt])
    rng = np.random.default_rng(5)
    z = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    x = np.tanh(rng.standard_normal((2, 3, 16, 16))).astype(np.float32)
    with torch.no_grad():
        ref_img = tiny_vae.decode(torch.from_numpy(z)).sample.numpy()
        post = tiny_vae.encode(torch.from_numpy(x)).latent_dist
        ref_mean, ref_logvar = post.mean.numpy(), post.logvar.numpy()
    img = vae.decode(z)
    mean, logvar = vae.encode_moments(x)
    errs = rel(img, ref_img), rel(mean, ref_mean), rel(logvar, ref_logvar)
    print(f"\nSD VAE vs diffusers ({fmt}): decode {errs[0]:.2e}, encode mean {errs[1]:.2e}, logvar {errs[2]:.2e}")
    assert img.shape == (2, 3, 16, 16) and max(errs) < 1e-4
    np.testing.assert_allclose(vae.decode_latents(z * vae.cfg.scaling_factor), img, rtol=1e-5, atol=1e-5)


def test_guided_ddim_loop_matches_a_diffusers_reference(saved, tiny_dit):
    """Five DDIM steps with guidance 4 on all latent channels, the loop of diffusers' DiTPipeline
    (DDIMScheduler, eta 0) against minidit's generate() from the same starting noise."""
    from diffusers import DDIMScheduler
    from minidit.commands.sample import generate
    params, cfg, _ = load_released_dit(saved / "safetensors")
    labels, steps, scale, seed = np.array([3, 7]), 5, 4.0, 11
    ours = generate(params, cfg, labels, steps, "ddim", scale, seed=seed, guidance="all", workers=1)
    x = torch.from_numpy(Generator(seed).normal((2, 4, 8, 8), dtype=np.float32))
    sched = DDIMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                          clip_sample=False, set_alpha_to_one=True, steps_offset=0)
    sched.set_timesteps(steps)
    dit = _patched_for_official_math(tiny_dit)
    y = torch.tensor([3, 7, 10, 10])
    with torch.no_grad():
        for t in sched.timesteps:
            out = dit(torch.cat([x, x]), timestep=t.repeat(4), class_labels=y).sample
            eps = out[:, :4]
            cond, uncond = eps.chunk(2)
            x = sched.step(uncond + scale * (cond - uncond), t, x).prev_sample
    err = rel(ours, x.numpy())
    print(f"\nguided DDIM ({steps} steps) vs diffusers' DDIMScheduler loop: max rel error {err:.2e}")
    assert err < 1e-4
    # and guidance matters here: the unguided samples are elsewhere
    unguided = generate(params, cfg, labels, steps, "ddim", 1.0, seed=seed, guidance="all", workers=1)
    assert rel(unguided, x.numpy()) > 1e-3


def test_loaders_never_import_torch(saved):
    code = f"""
import sys
from minidit.pretrained.dit import load_released_dit
from minidit.pretrained.vae import load_sd_vae
for p in {[str(saved / 'safetensors'), str(saved / 'bin'), str(saved / 'DiT-tiny.pt')]!r}:
    params, cfg, source = load_released_dit(p, num_heads=2)
for p in {[str(saved / 'safetensors'), str(saved / 'bin'), str(saved / 'old_vae')]!r}:
    vae = load_sd_vae(p)
assert "torch" not in sys.modules, "torch was imported"
print("ok", len(params))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok")


def test_truncated_and_foreign_files(saved, tmp_path):
    data = (saved / "DiT-tiny.pt").read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        load_released_dit(cut, num_heads=2)
    with pytest.raises(ValueError, match="not a DiT"):
        load_released_dit(saved / "bin" / "vae" / "diffusion_pytorch_model.bin")
    with pytest.raises(ValueError, match="AutoencoderKL"):
        load_sd_vae(saved / "DiT-tiny.pt")


def test_storages_of_every_dtype_and_views(tmp_path):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    sd = {"f32": base, "view": base.t()[1:], "f16": base.half(), "bf16": base.bfloat16(), "i64": base.long(),
          "scalar": torch.tensor(3.5), "empty": torch.zeros(0, 3)}
    torch.save(sd, tmp_path / "many.pt")
    got = load_torch_file(tmp_path / "many.pt")
    for k, v in sd.items():
        assert got[k].shape == tuple(v.shape), k
        np.testing.assert_array_equal(np.asarray(got[k], np.float64), v.double().numpy())
    assert not got["f32"].flags.writeable  # memory-mapped, read only


def test_command_on_a_tiny_pipeline(saved, tmp_path):
    out, npz = tmp_path / "grid.png", tmp_path / "s.npz"
    code = ("import sys; from minidit.pretrained.sample import main; "
            f"rc = main(['--dit', {str(saved / 'safetensors')!r}, '--classes', '1,4', '--sampler', 'ddim', "
            f"'--steps', '3', '--out', {str(out)!r}, '--npz', {str(npz)!r}, '--no-progress']); "
            "assert 'torch' not in sys.modules; sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    with np.load(npz) as f:
        assert f["arr_0"].shape == (2, 16, 16, 3) and f["arr_0"].dtype == np.uint8
        assert f["arr_1"].tolist() == [1, 4]
    assert out.stat().st_size > 0
    bad = subprocess.run([sys.executable, "-m", "minidit.pretrained", "--dit", str(saved / "safetensors"),
                          "--classes", "12", "--out", str(tmp_path / "b.png")], capture_output=True, text=True,
                         cwd=ROOT)
    assert bad.returncode == 2 and "class id 12" in bad.stderr and "Traceback" not in bad.stderr
