"""DiT training steps timed against each other in one process, interleaved (6 x 10 steps each):
the ratio of their costs, which holds when the machine is shared, where absolute times do not.
Used by the main-job search (benchmarks/main_job_search.py) to place a recipe added after the idle
calibration: its time per step = latent-p1-cosine's calibrated time x this ratio. Also the ratio
of the two VAEs' encoding times (the fixed cost of a latent run).

    python benchmarks/step_ratio.py [NAME ...]   (default: every config; latent-p1-cosine always runs)
"""
import sys
import time

import numpy as np

from minidit.backend import Generator
from minidit.diffusion import create_diffusion
from minidit.diffusion.objectives import make_objective
from minidit.latent.autoencoder import load_vae_encoder
from minidit.model import get_config, init_params
from minidit.training.data import load_dataset, to_model_space
from minidit.training.optim import AdamW, Muon, init_ema
from minidit.training.parallel import DataParallel
from minidit.commands.train import train_step

# name: (config, latent side); all on 4-channel latents
CONFIGS = {"latent-p1-cosine": (get_config("minidit-Tiny/2", patch_size=1, input_size=8, in_channels=4), 8),
           "latent-p1-d8-w96": (get_config("minidit-Tiny/2", patch_size=1, input_size=8, in_channels=4, depth=8,
                                           hidden_size=96, num_heads=4), 8),
           "latent-f2-p2": (get_config("minidit-Tiny/2", input_size=16, in_channels=4), 16),
           # flow matching on the winner's network: a velocity output only (no learned variance)
           "latent-p1-flow-ln": (get_config("minidit-Tiny/2", patch_size=1, input_size=8, in_channels=4,
                                            learn_sigma=False), 8),
           "latent-p1-flow": (get_config("minidit-Tiny/2", patch_size=1, input_size=8, in_channels=4,
                                         learn_sigma=False), 8),
           "latent-p1-ln": (get_config("minidit-Tiny/2", patch_size=1, input_size=8, in_channels=4), 8),
           "latent-p1-minsnr": (get_config("minidit-Tiny/2", patch_size=1, input_size=8, in_channels=4), 8),
           "latent-f2-flow-ln": (get_config("minidit-Tiny/2", input_size=16, in_channels=4, learn_sigma=False), 16)}
OBJECTIVES = {"latent-p1-flow-ln": lambda: make_objective("flow", False, "logit-normal", 0.0, 1.0, None, "eps"),
              "latent-p1-flow": lambda: make_objective("flow", False, "uniform", 0.0, 1.0, None, "eps"),
              "latent-p1-ln": lambda: make_objective("ddpm", True, "logit-normal", 0.0, 1.0, None, "eps"),
              "latent-p1-minsnr": lambda: make_objective("ddpm", True, "uniform", 0.0, 1.0, 5.0, "eps"),
              "latent-f2-flow-ln": lambda: make_objective("flow", False, "logit-normal", 0.0, 1.0, None, "eps")}
# the main command's recipe at other batch sizes (every other config trains at batch 32)
def _flow_m05():
    """The main command's objective: flow matching, logit-normal times with mean -0.5."""
    return make_objective("flow", False, "logit-normal", -0.5, 1.0, None, "eps")


for _b in (16, 64):
    CONFIGS[f"latent-p1-flow-ln-m-0.5-b{_b}"] = CONFIGS["latent-p1-flow-ln"]
    OBJECTIVES[f"latent-p1-flow-ln-m-0.5-b{_b}"] = _flow_m05
BATCH = {"latent-p1-flow-ln-m-0.5-b16": 16, "latent-p1-flow-ln-m-0.5-b64": 64}
# the main command's recipe on a wider (160 channels, 5 heads of 32) or a deeper (6 blocks) network
# or narrower ones: 96 channels in 4 heads of 24, 4, 6 or 8 blocks deep; 64 channels in 4 heads of 16, 8, 10 or 12
# blocks deep, in 2 heads of 32, 6, 8 or 10 blocks deep, or in 1 head, 8 blocks deep; 48 channels in 4 heads of 12,
# 8 or 12 blocks deep, or in 2 heads or 1, 8 blocks deep
for _tag, _kw in (("w160", {"hidden_size": 160, "num_heads": 5}), ("d6", {"depth": 6}),
                  ("w96", {"hidden_size": 96, "num_heads": 4}),
                  ("d6-w96", {"depth": 6, "hidden_size": 96, "num_heads": 4}),
                  ("d8-w96", {"depth": 8, "hidden_size": 96, "num_heads": 4}),
                  ("d8-w64", {"depth": 8, "hidden_size": 64, "num_heads": 4}),
                  ("d12-w64", {"depth": 12, "hidden_size": 64, "num_heads": 4}),
                  ("d10-w64", {"depth": 10, "hidden_size": 64, "num_heads": 4}),
                  ("d8-w64-h2", {"depth": 8, "hidden_size": 64, "num_heads": 2}),
                  ("d8-w48", {"depth": 8, "hidden_size": 48, "num_heads": 4}),
                  ("d12-w48", {"depth": 12, "hidden_size": 48, "num_heads": 4}),
                  ("d8-w64-h1", {"depth": 8, "hidden_size": 64, "num_heads": 1}),
                  ("d6-w64-h2", {"depth": 6, "hidden_size": 64, "num_heads": 2}),
                  ("d10-w64-h2", {"depth": 10, "hidden_size": 64, "num_heads": 2}),
                  ("d8-w48-h2", {"depth": 8, "hidden_size": 48, "num_heads": 2}),
                  ("d8-w48-h1", {"depth": 8, "hidden_size": 48, "num_heads": 1})):
    CONFIGS[f"latent-p1-flow-ln-m-0.5-{_tag}"] = (get_config("minidit-Tiny/2", patch_size=1, input_size=8,
                                                             in_channels=4, learn_sigma=False, **_kw), 8)
    OBJECTIVES[f"latent-p1-flow-ln-m-0.5-{_tag}"] = _flow_m05


# the main command's recipe with Muon for the blocks' weight matrices (--optimizer muon): the same network, a
# costlier optimiser step (five rounds of products per matrix)
CONFIGS["latent-p1-flow-ln-m-0.5-muon"] = CONFIGS["latent-p1-flow-ln"]
OBJECTIVES["latent-p1-flow-ln-m-0.5-muon"] = _flow_m05
OPTIMIZER = {"latent-p1-flow-ln-m-0.5-muon": Muon}


def main(names=()):
    d = create_diffusion("", learn_sigma=True)
    state = {}
    chosen = {n: CONFIGS[n] for n in CONFIGS if not names or n in names or n == "latent-p1-cosine"}
    for n, (cfg, side) in chosen.items():
        p = init_params(cfg, seed=0)
        state[n] = (p, init_ema(p), OPTIMIZER.get(n, AdamW)(p, lr=1e-3), cfg, side,
                    OBJECTIVES[n]() if n in OBJECTIVES else d)
    rng = Generator(0)
    times = {n: [] for n in chosen}
    with DataParallel(2) as par:
        for _ in range(6):
            for n, (p, e, o, cfg, side, objective) in state.items():
                b = BATCH.get(n, 32)
                y = np.arange(b) % 10
                t = time.perf_counter()
                for _ in range(10):
                    train_step(p, e, o, cfg, objective, rng.normal((b, 4, side, side), dtype=np.float32), y, rng, 0.99, par)
                times[n].append((time.perf_counter() - t) / 10)
    base = np.median(times["latent-p1-cosine"])
    for n in times:
        print(f"{n:18s} {np.median(times[n]) * 1000:7.1f} ms/step  ratio {np.median(times[n]) / base:.3f}")
    x = to_model_space(load_dataset("shapes", n=500).images)
    enc = {}
    for _ in range(3):
        for path in ("data/vae_shapes32.npz", "results/main-job/vae_f2.npz"):
            e = load_vae_encoder(path)
            t = time.perf_counter()
            e.encode_mean(x)
            enc.setdefault(path, []).append(time.perf_counter() - t)
    print(f"encoding, f=2 VAE / f=4 VAE: {min(enc['results/main-job/vae_f2.npz']) / min(enc['data/vae_shapes32.npz']):.2f}")


if __name__ == "__main__":
    unknown = [n for n in sys.argv[1:] if n not in CONFIGS]
    if unknown:
        sys.exit(f"step_ratio.py: unknown config {unknown[0]!r}; choose from {', '.join(CONFIGS)}")
    main(sys.argv[1:])
