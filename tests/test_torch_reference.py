"""minidit against an independent PyTorch reference (benchmarks/torch_dit.py, written with torch.nn
as the official DiT code builds it): forward outputs, every parameter gradient, the hybrid loss
and its gradient, and one training step, in float64, plus the float32 path. Skipped without torch.

Two float32 roundings of the official code are set aside in the float64 checks and checked on
their own: the timestep features (float32 libm; NumPy's and torch's float32 exp/cos/sin differ
by an ulp) and the position table (stored as float32 in the state_dict).
"""
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import torch_dit  # noqa: E402

from minidit.backend import Generator  # noqa: E402
from minidit.official import to_official  # noqa: E402
from minidit.diffusion import create_diffusion  # noqa: E402
from minidit.layers.timestep_embed import timestep_features  # noqa: E402
from minidit.model import dit_backward, dit_forward, get_config, param_shapes, pos_embed  # noqa: E402
from minidit.training.optim import AdamW, init_ema  # noqa: E402
from minidit.commands.train import train_step  # noqa: E402

CFG = get_config("DiT-S/2", input_size=8, depth=2, hidden_size=64, num_heads=4, num_classes=10,
                 in_channels=4)


def random_params(cfg, seed=0):
    """Every parameter random, zero-initialised ones included; values exactly representable in
    float32, so the official (float32) state_dict carries them without rounding."""
    rng = np.random.default_rng(seed)
    P = {}
    for k, s in param_shapes(cfg).items():
        std = 0.5 if len(s) == 1 else (1.0 if k.startswith("y_embedder") else 1.0 / np.sqrt(s[0]))
        P[k] = (std * rng.standard_normal(s)).astype(np.float32).astype(np.float64)
    return P


def inputs(cfg, seed=1):
    rng = np.random.default_rng(seed)
    N = 4
    x = rng.standard_normal((N, cfg.in_channels, cfg.input_size, cfg.input_size))
    t = np.array([0, 1, 537, 999])
    y = np.array([3, cfg.num_classes, 0, 9])  # the null class K included
    return x, t, y


def official_layout(grads, cfg):
    """Our gradients in the official names and shapes, in float64. to_official stores float32,
    so the gradient goes through it as a float32 pair hi + lo (the conversion is only a
    transpose or reshape), which keeps ~48 bits."""
    hi = {k: v.astype(np.float32) for k, v in grads.items()}
    lo = {k: (v - hi[k]).astype(np.float32) for k, v in grads.items()}
    a, b = to_official(hi, cfg), to_official(lo, cfg)
    return {k: a[k].astype(np.float64) + b[k] for k in a if k != "pos_embed"}


def torch_model(params, cfg, dtype, fused=True):
    model = torch_dit.build_model(cfg, fused_attn=fused)
    model.load_state_dict(torch_dit.state_dict_from_numpy(to_official(params, cfg)), strict=True)
    model = model.to(dtype).eval()
    if dtype == torch.float64:  # minidit's float64 path builds the table in float64
        table = torch_dit.get_2d_sincos_pos_embed(cfg.hidden_size, cfg.grid_size)
        model.pos_embed.data.copy_(torch.from_numpy(table)[None])
    return model


@pytest.fixture
def minidit_features(monkeypatch):
    """The torch model's timestep features replaced by minidit's float32 ones (see module doc)."""
    def feats(t, dim, max_period=10000):
        return torch.from_numpy(timestep_features(t.numpy(), dim, max_period))
    monkeypatch.setattr(torch_dit.TimestepEmbedder, "timestep_embedding", staticmethod(feats))


def rel(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def test_fixed_tables_agree_with_torch():
    # the position table: ours vs the reference's own float64 construction
    ref = torch_dit.get_2d_sincos_pos_embed(CFG.hidden_size, CFG.grid_size)
    ours = pos_embed(CFG, np, np.float64)
    assert np.abs(ours - ref).max() < 1e-12
    assert np.array_equal(to_official(random_params(CFG), CFG)["pos_embed"][0], ref.astype(np.float32))
    # timestep features: both float32; the exp/cos/sin of the two libraries differ by ulps,
    # which is up to one float32 ulp of t*f (6e-5 at t ~ 999)
    t = np.arange(1000)
    ours = timestep_features(t)
    theirs = torch_dit.TimestepEmbedder.timestep_embedding(torch.from_numpy(t), 256).numpy()
    err = np.abs(ours - theirs).max(axis=1)
    print(f"timestep features, max |minidit - torch|: {err.max():.2e} (t=0..999), "
          f"{err[:10].max():.2e} (t<10)")
    assert err.max() < 1.5e-4
    assert err[:10].max() < 1e-6


@pytest.mark.parametrize("fused", [True, False], ids=["sdpa", "explicit"])
def test_forward_and_every_gradient_float64(minidit_features, fused):
    P = random_params(CFG)
    x, t, y = inputs(CFG)
    out, cache = dit_forward(P, x, t, y, CFG)
    dout = np.random.default_rng(2).standard_normal(out.shape)
    dx, grads = dit_backward(dout, cache, need_dx=True)

    model = torch_model(P, CFG, torch.float64, fused)
    xt = torch.from_numpy(x).requires_grad_(True)
    out_t = model(xt, torch.from_numpy(t), torch.from_numpy(y))
    (out_t * torch.from_numpy(dout)).sum().backward()

    err_out = rel(out, out_t.detach().numpy())
    print(f"forward output: max rel error {err_out:.1e}")
    assert out.shape == tuple(out_t.shape) == (4, 8, 8, 8)
    assert err_out < 1e-10

    ours = official_layout(grads, CFG)
    theirs = {k: p.grad.numpy() for k, p in model.named_parameters() if p.requires_grad}
    assert set(ours) == set(theirs)
    worst = 0.0
    for k in sorted(theirs):
        assert ours[k].shape == theirs[k].shape, k
        e = rel(ours[k], theirs[k])
        print(f"  {k:<44} {e:.1e}")
        assert e < 1e-9, f"gradient of {k} differs from torch: rel error {e:.2e}"
        worst = max(worst, e)
    e = rel(dx, xt.grad.numpy())
    print(f"gradients: worst parameter rel error {worst:.1e}; input dx {e:.1e}")
    assert e < 1e-9


def test_forward_float32_against_official_features():
    """float32 end to end, each library with its own timestep features (nothing replaced)."""
    P = {k: v.astype(np.float32) for k, v in random_params(CFG).items()}
    x, t, y = inputs(CFG)
    out, _ = dit_forward(P, x.astype(np.float32), t, y, CFG)
    model = torch_model(P, CFG, torch.float32)
    with torch.no_grad():
        out_t = model(torch.from_numpy(x.astype(np.float32)), torch.from_numpy(t), torch.from_numpy(y)).numpy()
    err = rel(out, out_t)
    print(f"float32 forward: max rel error {err:.1e} (max abs {np.abs(out - out_t).max():.1e})")
    assert out.dtype == np.float32
    assert err < 2e-5


def loss_inputs(seed=3):
    rng = np.random.default_rng(seed)
    N, C, H = 6, 4, 8
    t = np.array([0, 0, 1, 500, 998, 999])
    x0 = np.clip(0.7 * rng.standard_normal((N, C, H, H)), -1, 1)  # some at +-1: the open bins
    noise = rng.standard_normal((N, C, H, H))
    out = np.concatenate([noise + 0.3 * rng.standard_normal((N, C, H, H)),  # eps_hat near eps
                          rng.uniform(-1.2, 1.2, (N, C, H, H))], axis=1)  # v, a little outside [-1, 1]
    dloss = rng.uniform(0.5, 1.5, N)
    return out, x0, noise, t, dloss


def torch_loss(out, x0, noise, t, dloss, dtype, coef_dtype):
    diff = torch_dit.Diffusion(coef_dtype=coef_dtype)
    T = lambda a: torch.from_numpy(np.asarray(a)).to(dtype)  # noqa: E731
    tt = torch.from_numpy(t)
    x_t = diff.q_sample(T(x0), tt, T(noise))
    out_t = T(out).requires_grad_(True)
    terms = diff.training_losses(out_t, T(x0), x_t, tt, T(noise))
    (terms["loss"] * T(dloss)).sum().backward()
    return {k: v.detach().numpy() for k, v in terms.items()}, out_t.grad.numpy(), x_t.numpy()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_hybrid_loss_and_its_gradient(dtype):
    out, x0, noise, t, dloss = (a.astype(dtype) if a.dtype.kind == "f" else a for a in loss_inputs())
    tdt = getattr(torch, dtype)
    # float64: our coefficients stay float64, the reference's too (the math is checked);
    # float32: both round the coefficients to float32, as the official code always does
    terms_t, grad_t, x_t = torch_loss(out, x0, noise, t, dloss, tdt, tdt)
    diffusion = create_diffusion("")
    ours = diffusion.training_losses(out, x0, diffusion.q_sample(x0, t, noise), t, noise, dloss=dloss)
    assert np.abs(diffusion.q_sample(x0, t, noise) - x_t).max() < (1e-12 if dtype == "float64" else 1e-6)
    tol = 1e-10 if dtype == "float64" else 2e-5
    for k in ("mse", "vb", "loss"):
        e = rel(ours[k], terms_t[k])
        print(f"{dtype} {k}: max rel error {e:.1e}  (t={t.tolist()})")
        assert e < tol, k
    C = x0.shape[1]
    for name, sl in (("eps", slice(None, C)), ("v", slice(C, None))):
        e = rel(ours["grad"][:, sl], grad_t[:, sl])
        print(f"{dtype} d loss / d {name}: max rel error {e:.1e}")
        assert e < (1e-9 if dtype == "float64" else 1e-4)
    # each timestep on its own, t = 0 (decoder NLL) and 999 included; in float32 a small KL is a
    # difference of O(1) terms, so its error is measured against the O(1) scale of the loss
    floor = 1e-3 if dtype == "float64" else 1.0
    for i, ti in enumerate(t):
        assert abs(ours["vb"][i] - terms_t["vb"][i]) <= tol * max(abs(terms_t["vb"][i]), floor), ti


def test_official_float32_coefficients_in_float64():
    """The official code casts its coefficients to float32 even for float64 tensors; minidit
    keeps float64. The difference is a float32 rounding of the schedule, nothing more."""
    out, x0, noise, t, dloss = loss_inputs()
    terms_t, grad_t, _ = torch_loss(out, x0, noise, t, dloss, torch.float64, torch.float32)
    diffusion = create_diffusion("")
    ours = diffusion.training_losses(out, x0, diffusion.q_sample(x0, t, noise), t, noise, dloss=dloss)
    e = max(rel(ours["vb"], terms_t["vb"]), rel(ours["grad"], grad_t))
    print(f"float64 with official float32 coefficients: max rel error {e:.1e}")
    assert e < 1e-4


def test_one_training_step_matches(minidit_features):
    """Two steps of train_step (forward, loss, backward, AdamW, EMA) from the same weights and
    the same draws of t, noise and label dropout, float64."""
    P = random_params(CFG, seed=5)
    x, _, y = inputs(CFG, seed=6)
    x = 0.5 * x
    model = torch_model(P, CFG, torch.float64)
    ema_t = torch_model(P, CFG, torch.float64)
    opt_t = torch_dit.make_optimizer(model)
    diff_t = torch_dit.Diffusion(coef_dtype=torch.float64)
    ours, ema, opt = dict(P), init_ema(P), AdamW(P, lr=1e-4, weight_decay=0.0)
    diffusion = create_diffusion("")
    rng, replay = Generator(7), Generator(7)
    for _ in range(2):
        s = train_step(ours, ema, opt, CFG, diffusion, x, y, rng, 0.9999)
        # the same draws, in train_step's order: t, noise, label dropout
        t = replay.integers(0, 1000, (len(y),))
        noise = replay.normal(x.shape, dtype=x.dtype)
        yd = np.where(replay.uniform((len(y),), dtype="float64") < CFG.class_dropout_prob, CFG.num_classes, y)
        st = torch_dit.train_step(model, ema_t, opt_t, diff_t, torch.from_numpy(x), torch.from_numpy(yd),
                                  0.9999, t=torch.from_numpy(t), noise=torch.from_numpy(noise))
        for k in ("loss", "mse", "vb", "grad_norm"):
            assert abs(s[k] - st[k]) < 1e-9 * abs(st[k]), k
    mine, emas = official_layout(ours, CFG), official_layout(ema, CFG)
    theirs = dict(model.named_parameters())
    theirs_ema = dict(ema_t.named_parameters())
    e = max(np.abs(mine[k] - theirs[k].detach().numpy()).max() for k in mine)
    e_ema = max(np.abs(emas[k] - theirs_ema[k].detach().numpy()).max() for k in emas)
    print(f"after 2 steps: max |param diff| {e:.1e}, max |ema diff| {e_ema:.1e} (lr 1e-4)")
    # Adam divides by sqrt(v) + 1e-8: where |g| ~ 1e-8 a 1e-16 difference in g moves the step by
    # ~1e-13, so the bound is one millionth of the step size lr
    assert e < 1e-10 and e_ema < 1e-12
