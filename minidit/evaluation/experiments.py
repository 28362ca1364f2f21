"""The paper's section 5 experiments at teaching scale (PAPER.md section 0): block designs,
model and patch size scaling, and model versus sampling compute, trained on the built-in data
and scored with minidit's own classifier (class accuracy and a Fréchet distance on its
features, FD_minidit_classifier, which is not Inception FID).

    python -m minidit.experiments block-designs [--fast] [--out results/block-designs]
"""
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from ..backend import Generator, get_device, set_device
from ..blocks import BLOCK_DESIGNS
from ..diffusion import create_diffusion
from ..flops import count_params, gflops, sampling_compute, training_compute
from ..model import DiT_models, init_params
from ..cli import CommandFailed, CommandParser, atomic_write, run_command
from ..training.data import DataLoader, load_dataset
from ..training.optim import AdamW, init_ema
from ..training.parallel import DataParallel, resolve_workers
from ..training.sample import generate
from ..training.train import train_step
from ..training.viz import figure
from .classifier import load_classifier
from .evaluate import DEFAULT_CLASSIFIER, FD_NAME, evaluate_samples

# Our own model sizes for the scaling grid (depth, hidden, heads); not the paper's S/B/L/XL.
SIZES = {"XS": (2, 64, 2), "Tiny": (4, 128, 4)}

# Budgets: (steps, batch, eval points, samples per class at each eval, DDPM steps for evals).
FULL = dict(steps=600, batch=32, evals=4, per_class=10, sample_steps=50, lr=1e-3, ema=0.99)
FAST = dict(steps=3, batch=4, evals=1, per_class=1, sample_steps=2, lr=1e-3, ema=0.9)


def make_cfg(size, patch, block="adaLN-Zero", fast=False):
    depth, hidden, heads = (1, 16, 2) if fast else SIZES[size]
    return DiT_models["minidit-Tiny/4"](depth=depth, hidden_size=hidden, num_heads=heads,
                                        patch_size=patch, block=block)


def quality(params, cfg, classifier, real, budget, seed=0, sample_steps=None, guidance_scale=1.0):
    """Class accuracy and Fréchet distance of unguided EMA samples (the paper's FIDs in its
    scaling tables are without guidance), one batch of per_class samples for every class."""
    labels = np.repeat(np.arange(cfg.num_classes), budget["per_class"])
    x = generate(params, cfg, labels, sample_steps or budget["sample_steps"], "ddpm", guidance_scale, seed)
    rep = evaluate_samples(x, labels, real, classifier)
    return {"class_accuracy": rep["class_accuracy"], FD_NAME: rep[FD_NAME], "n_samples": rep["n_samples"],
            "n_real": rep["n_real"]}


def train_and_track(cfg, data, classifier, real, budget, seed=0, log=print, name=""):
    """Train one model with the budget, scoring its EMA at evenly spaced steps."""
    rng = Generator(seed)
    params = init_params(cfg, seed=seed)
    ema, opt = init_ema(params), AdamW(params, lr=budget["lr"])
    diffusion = create_diffusion("", learn_sigma=cfg.learn_sigma)
    loader = DataLoader(data, budget["batch"], rng)
    eval_at = set(np.linspace(0, budget["steps"], budget["evals"] + 1).astype(int)[1:].tolist())
    history, losses, t0 = [], [], time.perf_counter()
    with DataParallel(resolve_workers(0, budget["batch"], get_device())) as parallel:  # CPU threads share a batch
        for step in range(1, budget["steps"] + 1):
            x, y = next(loader)
            s = train_step(params, ema, opt, cfg, diffusion, x, y, rng, budget["ema"], parallel)
            losses.append(s["loss"])
            if step in eval_at:
                q = quality(ema, cfg, classifier, real, budget)
                rec = {"step": step, "loss": float(np.mean(losses[-50:])), **q,
                       "train_compute_gflops": training_compute(cfg, budget["batch"], step),
                       "seconds": time.perf_counter() - t0}
                history.append(rec)
                log(f"  {name} step {step}: loss {rec['loss']:.4f}, class acc {100 * q['class_accuracy']:.1f}%, "
                    f"FD {q[FD_NAME]:.2f}")
    return ema, history


def _setup(fast):
    data = load_dataset("shapes", split="train", n=256 if fast else None)
    real = load_dataset("shapes", split="test", n=100 if fast else 1000)
    return data, real, load_classifier(DEFAULT_CLASSIFIER)


def run_block_designs(fast, log=print):
    budget = FAST if fast else FULL
    data, real, clf = _setup(fast)
    runs = {}
    for block in BLOCK_DESIGNS:  # the registry, in the order of the paper's Table 4
        cfg = make_cfg("Tiny", 4, block, fast)
        _, hist = train_and_track(cfg, data, clf, real, budget, log=log, name=block)
        runs[block] = {"gflops": gflops(cfg), "params": count_params(cfg)["trainable"], "history": hist}
    return {"budget": budget, "runs": runs}


def run_scaling(fast, log=print):
    budget = FAST if fast else FULL
    data, real, clf = _setup(fast)
    runs = {}
    for size in SIZES:
        for patch in (8, 4, 2):
            cfg = make_cfg(size, patch, fast=fast)
            name = f"{size}/{patch}"
            _, hist = train_and_track(cfg, data, clf, real, budget, log=log, name=name)
            runs[name] = {"size": size, "patch": patch, "gflops": gflops(cfg),
                          "params": count_params(cfg)["trainable"], "history": hist}
    return {"budget": budget, "runs": runs}


def run_sampling_compute(fast, log=print):
    budget = FAST if fast else FULL
    data, real, clf = _setup(fast)
    step_counts = [2, 4] if fast else [5, 10, 25, 50, 100, 250]
    runs = {}
    for size in SIZES:
        cfg = make_cfg(size, 4, fast=fast)
        ema, hist = train_and_track(cfg, data, clf, real, dict(budget, evals=1), log=log, name=f"{size}/4")
        curve = []
        for n in step_counts:
            q = quality(ema, cfg, clf, real, budget, sample_steps=n)
            curve.append({"sampling_steps": n, "sampling_compute_gflops": sampling_compute(cfg, n), **q})
            log(f"  {size}/4 with {n} sampling steps: class acc {100 * q['class_accuracy']:.1f}%, FD {q[FD_NAME]:.2f}")
        runs[f"{size}/4"] = {"gflops": gflops(cfg), "train_history": hist, "curve": curve}
    return {"budget": budget, "runs": runs}


EXPERIMENTS = {"block-designs": run_block_designs, "scaling": run_scaling,
               "sampling-compute": run_sampling_compute}


def _save(fig, path):
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=100)


def plot(name, result, out):
    """The figures of each experiment, as PNGs with labelled axes."""
    paths = []
    runs = result["runs"]
    if name in ("block-designs", "scaling"):
        fig = figure(figsize=(10, 3.8))
        axes = fig.subplots(1, 2)
        for label, r in runs.items():
            h = r["history"]
            axes[0].plot([e["step"] for e in h], [e[FD_NAME] for e in h], marker="o", label=label)
            axes[1].plot([e["step"] for e in h], [100 * e["class_accuracy"] for e in h], marker="o", label=label)
        axes[0].set(xlabel="training step", ylabel=f"{FD_NAME} (lower is better)",
                    title="Fréchet distance over training")
        axes[1].set(xlabel="training step", ylabel="class accuracy of samples (%)", title="class accuracy over training")
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        paths.append(out / f"{name}_over_training.png")
        _save(fig, paths[-1])
    if name == "scaling":
        fig = figure(figsize=(10, 3.8))
        axes = fig.subplots(1, 2)
        for label, r in runs.items():
            last = r["history"][-1]
            axes[0].scatter(r["gflops"], last[FD_NAME], label=label)
            axes[0].annotate(label, (r["gflops"], last[FD_NAME]), fontsize=7)
            h = r["history"]
            axes[1].plot([e["train_compute_gflops"] for e in h], [e[FD_NAME] for e in h], marker="o", label=label)
        axes[0].set(xscale="log", xlabel="Gflops per forward pass", ylabel=f"final {FD_NAME}",
                    title="quality against model Gflops")
        axes[1].set(xscale="log", xlabel="training compute (Gflops x batch x steps x 3)",
                    ylabel=FD_NAME, title="quality against training compute")
        axes[1].legend(fontsize=7)
        fig.tight_layout()
        paths.append(out / "scaling_vs_compute.png")
        _save(fig, paths[-1])
    if name == "sampling-compute":
        fig = figure(figsize=(5.5, 3.8))
        ax = fig.subplots()
        for label, r in runs.items():
            c = r["curve"]
            ax.plot([e["sampling_compute_gflops"] for e in c], [e[FD_NAME] for e in c], marker="o", label=label)
            for e in c:
                ax.annotate(str(e["sampling_steps"]), (e["sampling_compute_gflops"], e[FD_NAME]), fontsize=6)
        ax.set(xscale="log", xlabel="sampling compute per image (Gflops x steps)", ylabel=FD_NAME,
               title="quality against sampling compute (labels: steps)")
        ax.legend()
        fig.tight_layout()
        paths.append(out / "sampling_compute.png")
        _save(fig, paths[-1])
    return paths


def _run(args, argv):
    set_device(args.device)
    out = Path(args.out or f"results/{args.name}")
    for parent in [out, *out.resolve().parents]:
        if parent.exists():
            if not parent.is_dir():
                raise FileExistsError(f"--out {out}: {parent} is a file, not a folder")
            break
    t0 = time.perf_counter()
    try:
        result = EXPERIMENTS[args.name](args.fast)
    except KeyboardInterrupt as e:
        raise type(e)(f"{'terminated' if type(e).__name__ == 'Terminated' else 'interrupted'} during the "
                      f"{args.name} experiment; nothing was written") from None
    result.update(experiment=args.name, fast=args.fast, seconds=round(time.perf_counter() - t0, 1),
                  command="python -m minidit.experiments " + " ".join(shlex.quote(a) for a in argv),
                  machine=f"{platform.machine()}, {platform.system()}, {os.cpu_count()} CPUs, "
                          f"Python {platform.python_version()}, NumPy {np.__version__}")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_write(out / f"{args.name}.json") as tmp:
            tmp.write_text(json.dumps(result, indent=1))
        for p in plot(args.name, result, out):
            print(f"wrote {p}")
    except OSError as e:
        raise CommandFailed(f"could not write the results in {out}: {e.strerror or e} ({e.filename})") from e
    print(f"wrote {out / (args.name + '.json')} in {result['seconds']} s")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = CommandParser(prog="python -m minidit.experiments", description=__doc__.splitlines()[0])
    ap.add_argument("name", choices=list(EXPERIMENTS))
    ap.add_argument("--fast", action="store_true", help="tiny models and budgets (seconds; for tests)")
    ap.add_argument("--out", default=None, help="output folder (default results/NAME)")
    ap.add_argument("--device", default=None, help="cpu (default), gpu or auto")
    return run_command(ap, lambda args: _run(args, argv), argv)


if __name__ == "__main__":
    sys.exit(main())
