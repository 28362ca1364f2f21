"""Two DiT training steps timed against each other in one process, interleaved (6 x 10 steps each):
the ratio of their costs, which holds when the machine is shared, where absolute times do not.
Used by the main-job search (benchmarks/main_job_search.py) to place a recipe added after the idle
calibration: its time per step = the calibrated recipe's x this ratio.

    python benchmarks/step_ratio.py
"""
import time, numpy as np
from minidit.backend import Generator
from minidit.diffusion import create_diffusion
from minidit.model import get_config, init_params
from minidit.training.optim import AdamW, init_ema
from minidit.training.train import train_step
from minidit.training.parallel import DataParallel
cfgs = {"latent-p1": get_config("minidit-Tiny/2", patch_size=1, input_size=8, in_channels=4),
        "latent-p1-d8-w96": get_config("minidit-Tiny/2", patch_size=1, input_size=8, in_channels=4, depth=8, hidden_size=96, num_heads=4)}
d = create_diffusion("", learn_sigma=True)
state = {}
for n, cfg in cfgs.items():
    p = init_params(cfg, seed=0); state[n] = (p, init_ema(p), AdamW(p, lr=1e-3), cfg)
rng = Generator(0); y = np.arange(32) % 10
times = {n: [] for n in cfgs}
with DataParallel(2) as par:
    for rep in range(6):
        for n, (p, e, o, cfg) in state.items():
            t = time.perf_counter()
            for _ in range(10):
                x = rng.normal((32, 4, 8, 8), dtype=np.float32)
                train_step(p, e, o, cfg, d, x, y, rng, 0.99, par)
            times[n].append((time.perf_counter() - t) / 10)
for n in times: print(n, np.median(times[n]) * 1000)
print("ratio", np.median(times["latent-p1-d8-w96"]) / np.median(times["latent-p1"]))
