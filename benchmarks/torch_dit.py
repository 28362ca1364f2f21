"""An independent PyTorch reference of DiT (adaLN-Zero), its hybrid training loss and its training
step, written with torch.nn the way the official facebookresearch/DiT code builds them (docs/paper.md §1,
3.4, 4.3). Module names equal the official state_dict keys, so minidit weights load with
`model.load_state_dict(to_torch(to_official(params, cfg)))`. Used by tests/test_torch_reference.py
to check minidit numerically, and by the benchmarks as the PyTorch-eager baseline.

Only torch and NumPy are used here; nothing is imported from minidit, so the check is independent.
"""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

FREQ_DIM = 256


# ---- model (docs/paper.md §1.1-§1.6) -------------------------------------------------------------------

def sincos_1d(d, pos):
    """(M,) positions -> (M, d): [sin(pos w), cos(pos w)], w_k = 10000^(-k/(d/2)), float64."""
    omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
    out = np.outer(np.asarray(pos, dtype=np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def get_2d_sincos_pos_embed(D, G):
    """(G*G, D) float64 table, tokens row-major; channels [0, D/2) encode the column index."""
    row, col = np.meshgrid(np.arange(G), np.arange(G), indexing="ij")
    return np.concatenate([sincos_1d(D // 2, col.ravel()), sincos_1d(D // 2, row.ravel())], axis=1)


def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class PatchEmbed(nn.Module):
    """timm's PatchEmbed as DiT uses it: Conv2d with kernel = stride = p, flatten, (N, T, D)."""

    def __init__(self, patch_size, in_chans, embed_dim):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden_size, frequency_embedding_size=FREQ_DIM):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(frequency_embedding_size, hidden_size, bias=True), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size, bias=True))
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t, dim, max_period=10000):
        """[cos(t f), sin(t f)] in float32, f_k = exp(-ln(max_period) k / half)."""
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return emb

    def forward(self, t):
        t_freq = self.timestep_embedding(t, self.frequency_embedding_size)
        # float32 features, cast to the weights' dtype (the official code is float32 throughout)
        return self.mlp(t_freq.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """K+1 rows when label dropout is used; row K is the null class."""

    def __init__(self, num_classes, hidden_size, dropout_prob):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), hidden_size)
        self.num_classes, self.dropout_prob = num_classes, dropout_prob

    def forward(self, labels, train, force_drop_ids=None):
        if (train and self.dropout_prob > 0) or force_drop_ids is not None:
            if force_drop_ids is None:
                drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
            else:
                drop = force_drop_ids == 1
            labels = torch.where(drop, self.num_classes, labels)
        return self.embedding_table(labels)


class Attention(nn.Module):
    """timm's Attention with qkv_bias: fused qkv read as (3, heads, head_dim)."""

    def __init__(self, dim, num_heads, fused=True):
        super().__init__()
        self.num_heads, self.head_dim, self.fused = num_heads, dim // num_heads, fused
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x):
        N, T, D = x.shape
        qkv = self.qkv(x).reshape(N, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (N, nh, T, hd)
        if self.fused:
            x = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = (q * self.head_dim ** -0.5) @ k.transpose(-2, -1)
            x = attn.softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(N, T, D))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.act = nn.GELU(approximate="tanh")

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class DiTBlock(nn.Module):
    def __init__(self, D, num_heads, mlp_ratio=4.0, fused_attn=True):
        super().__init__()
        self.norm1 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(D, num_heads, fused_attn)
        self.norm2 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(D, int(D * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(D, 6 * D, bias=True))

    def forward(self, x, c):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    def __init__(self, D, patch_size, out_channels):
        super().__init__()
        self.norm_final = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(D, patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(D, 2 * D, bias=True))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    def __init__(self, input_size=32, patch_size=2, in_channels=4, hidden_size=1152, depth=28,
                 num_heads=16, mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=1000,
                 learn_sigma=True, fused_attn=True):
        super().__init__()
        self.in_channels, self.patch_size, self.num_heads = in_channels, patch_size, num_heads
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        G = input_size // patch_size
        table = torch.from_numpy(get_2d_sincos_pos_embed(hidden_size, G)).float().unsqueeze(0)
        self.pos_embed = nn.Parameter(table, requires_grad=False)  # fixed (1, T, D)
        self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio, fused_attn)
                                     for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)

    def unpatchify(self, x):
        """(N, T, p*p*C_out) -> (N, C_out, I, I); each token's vector is read as (a, b, c)."""
        c, p = self.out_channels, self.patch_size
        h = w = int(x.shape[1] ** 0.5)
        x = x.reshape(x.shape[0], h, w, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, h * p, w * p)

    def forward(self, x, t, y):
        x = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t) + self.y_embedder(y, self.training)
        for block in self.blocks:
            x = block(x, c)
        return self.unpatchify(self.final_layer(x, c))


IMPLEMENTED_BLOCKS = {"adaLN-Zero"}  # the official code's design; the other three are minidit's alone


def build_model(cfg, fused_attn=True):
    """A torch DiT from a minidit DiTConfig (or anything with the same fields); adaLN-Zero only."""
    if getattr(cfg, "block", "adaLN-Zero") not in IMPLEMENTED_BLOCKS:
        raise ValueError(f"torch_dit implements only the adaLN-Zero block, not {cfg.block!r}")
    return DiT(cfg.input_size, cfg.patch_size, cfg.in_channels, cfg.hidden_size, cfg.depth,
               cfg.num_heads, cfg.mlp_ratio, cfg.class_dropout_prob, cfg.num_classes,
               cfg.learn_sigma, fused_attn)


def state_dict_from_numpy(sd):
    """{name: NumPy array} (e.g. minidit.official.to_official) -> {name: tensor}."""
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}


# ---- hybrid loss (docs/paper.md §3.2, §3.4, §3.5) -------------------------------------------------------

def normal_kl(mean1, logvar1, mean2, logvar2):
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x):
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


def discretized_gaussian_log_likelihood(x, means, log_scales):
    centered_x = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered_x + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered_x - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus,
                       torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


class Diffusion:
    """Linear schedule, T = 1000, all steps kept (create_diffusion("")), learned-range variance.

    Tables are float64 NumPy; every coefficient is gathered at t and cast to `coef_dtype`
    before it touches a tensor: float32 as the official `_extract_into_tensor` does. A float64
    gradient check of an implementation that keeps float64 coefficients passes torch.float64.
    """

    def __init__(self, num_timesteps=1000, coef_dtype=torch.float32):
        scale = 1000 / num_timesteps
        base = np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)
        abar = np.cumprod(1.0 - base)
        betas = 1.0 - abar / np.append(1.0, abar[:-1])  # respaced with every step kept, as official
        self.num_timesteps, self.coef_dtype = num_timesteps, coef_dtype
        alphas = 1.0 - betas
        abar = np.cumprod(alphas)
        abar_prev = np.append(1.0, abar[:-1])
        post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
        self.tables = {
            "sqrt_abar": np.sqrt(abar), "sqrt_1m_abar": np.sqrt(1.0 - abar),
            "sqrt_recip_abar": np.sqrt(1.0 / abar), "sqrt_recipm1_abar": np.sqrt(1.0 / abar - 1),
            "post_log_var_clipped": np.log(np.append(post_var[1], post_var[1:])),
            "log_betas": np.log(betas),
            "coef1": betas * np.sqrt(abar_prev) / (1.0 - abar),
            "coef2": (1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar),
        }
        self._cache = {}

    def _extract(self, name, t, like):
        key = (name, like.device, self.coef_dtype)
        if key not in self._cache:
            self._cache[key] = torch.from_numpy(self.tables[name]).to(like.device)
        return self._cache[key][t].to(self.coef_dtype).reshape(-1, 1, 1, 1)

    def q_sample(self, x_start, t, noise):
        return self._extract("sqrt_abar", t, x_start) * x_start + self._extract("sqrt_1m_abar", t, x_start) * noise

    def q_posterior(self, x_start, x_t, t):
        mean = self._extract("coef1", t, x_t) * x_start + self._extract("coef2", t, x_t) * x_t
        return mean, self._extract("post_log_var_clipped", t, x_t)

    def p_mean_variance(self, model_output, x_t, t):
        C = x_t.shape[1]
        eps, v = model_output[:, :C], model_output[:, C:]
        min_log = self._extract("post_log_var_clipped", t, x_t)
        max_log = self._extract("log_betas", t, x_t)
        frac = (v + 1) / 2
        log_var = frac * max_log + (1 - frac) * min_log
        pred_xstart = self._extract("sqrt_recip_abar", t, x_t) * x_t - self._extract("sqrt_recipm1_abar", t, x_t) * eps
        mean, _ = self.q_posterior(pred_xstart, x_t, t)
        return mean, log_var

    def training_losses(self, model_output, x_start, x_t, t, noise):
        """Per-sample mse, vb (bits/dim, stop-gradient on eps_hat) and loss = mse + vb, each (N,)."""
        C = x_start.shape[1]
        eps_hat, v = model_output[:, :C], model_output[:, C:]
        frozen = torch.cat([eps_hat.detach(), v], dim=1)
        mean, log_var = self.p_mean_variance(frozen, x_t, t)
        true_mean, true_log_var = self.q_posterior(x_start, x_t, t)
        kl = normal_kl(true_mean, true_log_var, mean, log_var).mean(dim=(1, 2, 3)) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x_start, mean, 0.5 * log_var)
        nll = nll.mean(dim=(1, 2, 3)) / math.log(2.0)
        vb = torch.where(t == 0, nll, kl)
        mse = ((noise - eps_hat) ** 2).mean(dim=(1, 2, 3))
        return {"loss": mse + vb, "mse": mse, "vb": vb}


# ---- training step (docs/paper.md §4.3) ----------------------------------------------------------------

def make_optimizer(model, lr=1e-4, weight_decay=0.0):
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)


@torch.no_grad()
def update_ema(ema_model, model, decay=0.9999):
    """ema <- decay ema + (1 - decay) param for every named parameter, pos_embed included."""
    ema_params = dict(ema_model.named_parameters())
    for name, param in model.named_parameters():
        ema_params[name].mul_(decay).add_(param.data, alpha=1 - decay)


def train_step(model, ema, opt, diffusion, x, y, ema_decay=0.9999, t=None, noise=None):
    """One step of DiT's train.py, as minidit.commands.train.train_step: t ~ U{0..T-1}, noise, forward
    (label dropout inside the model in train mode), hybrid loss, backward, AdamW, EMA.
    t and noise are drawn with torch unless given. Returns the batch means and the grad norm."""
    if t is None:
        t = torch.randint(0, diffusion.num_timesteps, (x.shape[0],), device=x.device)
    if noise is None:
        noise = torch.randn_like(x)
    x_t = diffusion.q_sample(x, t, noise)
    out = model(x_t, t, y)
    terms = diffusion.training_losses(out, x, x_t, t, noise)
    opt.zero_grad(set_to_none=True)
    terms["loss"].mean().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    gnorm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    opt.step()
    update_ema(ema, model, ema_decay)
    stats = {k: float(v.detach().mean()) for k, v in terms.items()}
    return dict(stats, grad_norm=float(gnorm))
