"""The paper's section 5 experiments at teaching scale (PAPER.md section 0): block designs,
model and patch size scaling, and model versus sampling compute, trained on the built-in data
with the main job's latent recipe and scored on samples with minidit's own classifier (class
accuracy and a Fréchet distance on its features, FD_minidit_classifier, which is not Inception
FID), with several training seeds and bootstrap error bars.

    python -m minidit.experiments block-designs [--fast] [--out results/block-designs]

Every (model, seed) is an ordinary `python -m minidit.train` run in its own folder under --runs
(default runs/experiments), checkpointed at every evaluation step. Its evaluations are kept in
that folder (evals.json), so an interrupted experiment continues where it stopped when the same
command runs again, and runs that two experiments share (the Tiny/1 adaLN-Zero model is in all
three) are trained and scored once. The result file is rewritten after every finished run.
"""
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from ..backend import set_device
from ..blocks import BLOCK_DESIGNS
from ..cli import CommandFailed, CommandParser, atomic_write, run_command
from ..flops import count_params, gflops, sampling_compute
from ..latent.autoencoder import load_vae_decoder
from ..model import DiT_models
from ..training import train as train_command
from ..training.checkpoint import checkpoints_of, find_vae, load_model, shipped_file
from ..training.data import load_dataset
from ..training.sample import generate
from ..training.viz import figure
from .classifier import load_classifier
from .evaluate import DEFAULT_CLASSIFIER, FD_NAME, evaluate_samples, feature_stats, frechet_distance_from_stats

# Our own model sizes (depth, width, heads); not the paper's S/B/L/XL.
SIZES = {"XS": (2, 64, 2), "Tiny": (4, 128, 4)}
# Patch sizes on the VAE's 8x8x4 latents of the 32x32 images: 4, 16 and 64 tokens, as the paper's
# /8, /4 and /2 give 16, 64 and 256 tokens on its 32x32x4 latents.
PATCHES = (4, 2, 1)
VAE = "data/vae_shapes32.npz"
# The main job's recipe (README): latents of the shipped VAE, AdamW at 2e-3 after 100 warm-up
# steps, batch 32, EMA 0.998. One change: the learning rate stays constant after the warm-up, as
# in the paper, instead of the main job's cosine decay, so that a checkpoint at step s is the same
# whatever the run's length and the curves "quality over training" mean what they say.
RECIPE = dict(lr=2e-3, batch=32, ema=0.998, warmup=100)
# Budgets. Steps from the study in results/experiments-budget/ (README): the best model's unguided
# class accuracy is clearly above chance (95% interval above 20%) from step 1750; 2000 is the next
# point of the 500-step evaluation grid. Every evaluation step scores per_class samples of every
# class, unguided (the curves over training); the last step adds final_per_class samples, unguided
# and guided (the tables, bars and verdicts).
FULL = dict(steps=2000, batch=RECIPE["batch"], eval_every=500, per_class=10, final_per_class=30, sample_steps=50, guidance=4.0,
            seeds=(0, 1), sample_seed=1, bootstrap=200, sampling_steps=(5, 10, 25, 50, 100, 250),
            num_images=None, num_real=1000)
FAST = dict(steps=4, batch=4, eval_every=2, per_class=1, final_per_class=2, sample_steps=2, guidance=4.0,
            seeds=(0, 1), sample_seed=1, bootstrap=50, sampling_steps=(2, 4), num_images=64, num_real=100)
SAMPLING_MODELS = ("XS/1", "Tiny/2", "Tiny/1")  # sampling-compute: three Gflops, seed 0
METRICS = {"class_accuracy": "higher", FD_NAME: "lower"}


def make_cfg(size, patch, block="adaLN-Zero", fast=False):
    """The DiTConfig of one model of the experiments, on the shipped VAE's 8x8x4 latents."""
    depth, hidden, heads = (1, 16, 2) if fast else SIZES[size]
    return DiT_models["minidit-Tiny/2"](depth=depth, hidden_size=hidden, num_heads=heads, patch_size=patch,
                                        block=block, input_size=8, in_channels=4, num_classes=10)


def run_name(size, patch, block, seed):
    return f"{size}-{patch}_{block}_seed{seed}"


def train_arguments(size, patch, block, seed, budget, out, fast=False, device=None):
    """The `python -m minidit.train` arguments of one run: the recipe, checkpoints at every evaluation."""
    depth, hidden, heads = (1, 16, 2) if fast else SIZES[size]
    args = ["--vae", str(shipped_file(VAE)), "--model", "minidit-Tiny/2", "--depth", str(depth),
            "--hidden-size", str(hidden), "--num-heads", str(heads), "--patch-size", str(patch), "--block", block,
            "--lr", str(RECIPE["lr"]), "--batch-size", str(budget["batch"]),
            "--ema-decay", str(RECIPE["ema"]), "--warmup", str(0 if fast else RECIPE["warmup"]),
            "--steps", str(budget["steps"]), "--ckpt-every", str(budget["eval_every"]), "--keep", "1000",
            "--seed", str(seed), "--no-progress", "--out", str(out)]
    if budget["num_images"]:
        args += ["--num-images", str(budget["num_images"])]
    if fast:  # a loss record every step, so that every evaluation step has its loss
        args += ["--no-sample-grid", "--log-every", "1"]
    if device:
        args += ["--device", device]
    return args


def _checkpoint_steps(run_dir):
    return {int(p.stem.split("_")[1]): p for p in checkpoints_of(run_dir)} if run_dir.is_dir() else {}


def _train_seconds(run_dir, up_to):
    """Training time of a run's first `up_to` steps from its log (steps between records / steps
    per second; a run trained further by another experiment counts only these steps)."""
    t, last = 0.0, 0
    log = run_dir / "log.jsonl"
    for line in log.read_text().splitlines() if log.exists() else ():
        rec = json.loads(line)
        if "steps_per_sec" in rec and last < rec["step"] <= up_to:
            t, last = t + (rec["step"] - last) / rec["steps_per_sec"], rec["step"]
    return round(t, 1)


def _loss_at(run_dir, step, window=50):
    """Mean training loss over the `window` steps up to `step`, from the run's log."""
    recs = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    near = [r["loss"] for r in recs if step - window < r["step"] <= step]
    return float(np.mean(near)) if near else None


def bootstrap(correct, f_fake, f_real, n_boot, seed=0):
    """Deviations of class accuracy and Fréchet distance over `n_boot` resamplings (with
    replacement) of the generated samples, the real set held fixed. Returned centred (replicate
    minus the replicates' mean): a resample repeats samples, which biases the Fréchet distance
    upward, so the spread is used and not the replicates' level."""
    rng = np.random.default_rng(seed)
    mu_r, s_r = feature_stats(f_real)
    n = len(correct)
    acc, fd = np.empty(n_boot), np.empty(n_boot)
    with threadpool_limits(1, user_api="blas"):  # hundreds of small eigh calls: one thread is faster
        for b in range(n_boot):
            i = rng.integers(0, n, n)
            acc[b] = correct[i].mean()
            fd[b] = frechet_distance_from_stats(*feature_stats(f_fake[i]), mu_r, s_r)
    return {"class_accuracy": acc - acc.mean(), FD_NAME: fd - fd.mean()}


def interval(estimate, deviations):
    """95% normal interval from bootstrap deviations: estimate -/+ z sd."""
    half = 1.959964 * float(np.std(deviations))
    return [float(estimate) - half, float(estimate) + half]


def combine(estimates, deviations, n_boot=2000, seed=0):
    """A configuration's value over its seeds: the mean, and a 95% interval from a two-level
    bootstrap (draw the seeds with replacement, then one sample-bootstrap deviation of each
    drawn seed). With 2 seeds the seed level can only draw {a, a}, {a, b}, {b, b}: it catches the
    spread between two seeds, and understates the true seed variance by about half."""
    est = np.asarray(estimates, dtype=np.float64)
    rng = np.random.default_rng(seed)
    k = len(est)
    picks = rng.integers(0, k, (n_boot, k))
    vals = est[picks]
    if deviations is not None:
        dev = [np.asarray(d, dtype=np.float64) for d in deviations]
        vals = vals + np.stack([np.stack([dev[s][rng.integers(0, len(dev[s]))] for s in row]) for row in picks])
    reps = vals.mean(axis=1)
    lo, hi = np.percentile(reps, [2.5, 97.5])
    return {"mean": float(est.mean()), "ci": [float(lo), float(hi)], "seeds": [float(e) for e in est]}, reps


class Experiment:
    """What every experiment needs: the budget, the classifier and the real images, the run
    folders, and training or scoring one run when its folder does not hold the answer yet."""

    def __init__(self, fast, runs_dir=None, device=None, log=print):
        self.fast, self.device, self.log = fast, device, log
        self.budget = FAST if fast else FULL
        self.runs_dir = Path(runs_dir or "runs/experiments")
        self.classifier = load_classifier(DEFAULT_CLASSIFIER)
        self.real = load_dataset("shapes", split="test", n=self.budget["num_real"])
        self._decoder = None

    def run_dir(self, size, patch, block, seed):
        return self.runs_dir / run_name(size, patch, block, seed)

    def train(self, size, patch, block, seed):
        """Train one run up to the budget's steps (resumes a shorter run, keeps a longer one)."""
        out = self.run_dir(size, patch, block, seed)
        have = _checkpoint_steps(out)
        if have and max(have) >= self.budget["steps"]:
            return out
        argv = train_arguments(size, patch, block, seed, self.budget, out, self.fast, self.device)
        argv += ["--resume"] if have else (["--overwrite"] if out.exists() else [])
        ap = train_command.build_parser()
        args = ap.parse_args(argv)
        self.log(f"training {out.name}: python -m minidit.train {' '.join(shlex.quote(a) for a in argv)}")
        train_command.run(args, log=lambda line: None)
        return out

    def decoder(self, ckpt, meta):
        if self._decoder is None:
            self._decoder = load_vae_decoder(find_vae(meta["vae"], ckpt), device=self.device,
                                             latent_scale=meta.get("latent_scale"))
        return self._decoder

    def evaluate(self, run_dir, step, per_class, guidance=1.0, sample_steps=None):
        """Class accuracy and Fréchet distance of the run's EMA samples at `step`, with bootstrap
        deviations; cached in the run folder's evals.json."""
        b = self.budget
        sample_steps = sample_steps or b["sample_steps"]
        key = (f"step {step}, {per_class} per class, guidance {guidance:g}, DDPM {sample_steps}, "
               f"sample seed {b['sample_seed']}, {b['bootstrap']} resamples, {len(self.real)} real")
        cache_path = run_dir / "evals.json"
        cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
        if key in cache:
            return cache[key]
        ckpt = _checkpoint_steps(run_dir)[step]
        params, cfg, meta = load_model(ckpt, device=self.device)
        labels = np.repeat(np.arange(cfg.num_classes), per_class)
        t0 = time.perf_counter()
        x = generate(params, cfg, labels, sample_steps, "ddpm", guidance, seed=b["sample_seed"], device=self.device,
                     decode=self.decoder(ckpt, meta))
        rep = evaluate_samples(x, labels, self.real, self.classifier, device=self.device, keep_features=True)
        dev = bootstrap(rep["predictions"] == labels, rep["sample_features"], rep["real_features"], b["bootstrap"])
        rec = {"step": step, "guidance_scale": guidance, "sampling_steps": sample_steps, "n_samples": len(labels),
               "class_accuracy": rep["class_accuracy"], FD_NAME: rep[FD_NAME],
               "per_class_accuracy": rep["per_class_accuracy"],
               "seconds": round(time.perf_counter() - t0, 1),
               "bootstrap": {k: [round(float(v), 5) for v in d] for k, d in dev.items()}}
        for k in METRICS:  # clipped to the metric's range: accuracy in [0, 1], distances >= 0
            lo, hi = interval(rec[k], dev[k])
            rec[k + "_ci"] = [max(lo, 0.0), min(hi, 1.0) if k == "class_accuracy" else hi]
        cache[key] = rec
        with atomic_write(cache_path) as tmp:
            tmp.write_text(json.dumps(cache))
        return rec

    def track(self, size, patch, block, seed):
        """Train one run and score it at every evaluation step with the same number of unguided
        samples (a Fréchet distance of fewer samples is biased upward, so the curve compares like
        with like); the last step also with final_per_class samples, unguided and guided.
        Returns the run's record."""
        b = self.budget
        out = self.train(size, patch, block, seed)
        steps = list(range(b["eval_every"], b["steps"] + 1, b["eval_every"]))
        history = []
        for s in steps:
            e = {"step": s, "loss": _loss_at(out, s), "unguided": self.evaluate(out, s, b["per_class"])}
            if s == steps[-1]:
                e["final_unguided"] = self.evaluate(out, s, b["final_per_class"])
                e["final_guided"] = self.evaluate(out, s, b["final_per_class"], b["guidance"])
            history.append(e)
        last = history[-1]
        self.log(f"  {out.name} step {last['step']}: loss {last['loss']:.4f}, unguided class acc "
                 f"{100 * last['final_unguided']['class_accuracy']:.1f}%, FD {last['final_unguided'][FD_NAME]:.2f}; "
                 f"guided {100 * last['final_guided']['class_accuracy']:.1f}%, FD {last['final_guided'][FD_NAME]:.2f}")
        return {"run_dir": str(out), "train_seconds": _train_seconds(out, b["steps"]), "history": history}

    def grid(self, models, on_progress=None):
        """models: {name: (size, patch, block)}. Every seed of every model, seed-major (all models
        get seed 0 first, so a partial result already covers every model)."""
        runs = {}
        for name, (size, patch, block) in models.items():
            cfg = make_cfg(size, patch, block, self.fast)
            runs[name] = {"size": size, "patch": patch, "block": block, "gflops": gflops(cfg),
                          "params": count_params(cfg)["trainable"], "tokens": (cfg.input_size // patch) ** 2,
                          "seeds": {}}
        full = {name: {} for name in models}  # the records with every bootstrap deviation
        for seed in self.budget["seeds"]:
            for name, (size, patch, block) in models.items():
                full[name][str(seed)] = self.track(size, patch, block, seed)
                runs[name]["seeds"][str(seed)] = strip(full[name][str(seed)])
                runs[name]["summary"] = summarise(dict(runs[name], seeds=full[name]), self.budget)
                if on_progress:  # the models with at least one finished seed
                    on_progress({n: r for n, r in runs.items() if r["seeds"]})
        return runs


MODES = ("unguided", "final_unguided", "final_guided")


def strip(run):
    """A run's record without the bootstrap deviations of its evaluations, except the final
    ones (the committed JSON keeps those, to recompute the two-level intervals of the verdicts)."""
    run = json.loads(json.dumps(run))
    for e in run["history"]:
        e["unguided"].pop("bootstrap", None)
    return run


def summarise(model, budget):
    """Per evaluation step: every metric's mean over the seeds with its two-level interval, and the
    training compute. Steps where only some seeds exist yet are summarised over those."""
    seeds = list(model["seeds"].values())
    out = []
    for i, e0 in enumerate(seeds[0]["history"]):
        rec = {"step": e0["step"], "train_compute_gflops": model["gflops"] * budget["batch"] * e0["step"] * 3,  # flops.training_compute
               "n_seeds": len(seeds)}
        losses = [s["history"][i]["loss"] for s in seeds]
        rec["loss"] = combine(losses, None)[0] if None not in losses else None
        for mode in MODES:
            if mode not in e0:
                continue
            evals = [s["history"][i][mode] for s in seeds]
            rec[mode] = {"n_samples": e0[mode]["n_samples"]}
            for k in METRICS:
                devs = [e.get("bootstrap", {}).get(k) for e in evals]
                rec[mode][k], _ = combine([e[k] for e in evals], devs if all(d for d in devs) else None)
                lo, hi = rec[mode][k]["ci"]  # the metric's range: accuracy in [0, 1], distances >= 0
                rec[mode][k]["ci"] = [max(lo, 0.0), min(hi, 1.0) if k == "class_accuracy" else hi]
        out.append(rec)
    return out


def final_replicates(model, mode, metric, n_boot=2000, seed=0):
    """Two-level bootstrap replicates of a model's final value (its last evaluation)."""
    evals = [s["history"][-1][mode] for s in model["seeds"].values()]
    devs = [e["bootstrap"][metric] for e in evals]
    return combine([e[metric] for e in evals], devs, n_boot, seed)


def better(a, b, metric):
    """'finding' when a's 95% interval lies wholly on the better side of b's, else 'not a finding'.
    metric: a key of METRICS, or "loss" (lower is better)."""
    if metric == "loss" or METRICS[metric] == "lower":
        return "finding" if a["ci"][1] < b["ci"][0] else "not a finding"
    return "finding" if a["ci"][0] > b["ci"][1] else "not a finding"


def _fmt(v, metric):
    if metric == "class_accuracy":
        return f"{100 * v['mean']:.1f}% [{100 * v['ci'][0]:.1f}, {100 * v['ci'][1]:.1f}]"
    return f"{v['mean']:.2f} [{v['ci'][0]:.2f}, {v['ci'][1]:.2f}]"


def block_design_findings(runs):
    """adaLN-Zero best (each metric), and the in-context / adaLN-Zero Fréchet distance ratio."""
    out = []
    best = "adaLN-Zero"
    if best not in runs:
        return out
    for mode in ("final_unguided", "final_guided"):
        for metric in METRICS:
            fin = {d: r["summary"][-1][mode][metric] for d, r in runs.items()}
            order = sorted(fin, key=lambda d: fin[d]["mean"], reverse=METRICS[metric] == "higher")
            verdicts = {d: better(fin[best], fin[d], metric) for d in fin if d != best}
            out.append({"claim": f"adaLN-Zero has the best {_mode_name(mode)} {metric} of the four designs",
                        "verdict": "finding" if all(v == "finding" for v in verdicts.values()) else "not a finding",
                        "ranking": order, "values": {d: _fmt(fin[d], metric) for d in order},
                        "against": verdicts})
    # the training loss (mean of the last 50 steps; interval over the seeds only): the measure by which
    # the paper's figure 5 shows adaLN-Zero ahead from early on, although the paper ranks by FID
    loss = {d: r["summary"][-1]["loss"] for d, r in runs.items()}
    if all(loss.values()):
        order = sorted(loss, key=lambda d: loss[d]["mean"])
        verdicts = {d: better(loss[best], loss[d], "loss") for d in loss if d != best}
        out.append({"claim": "adaLN-Zero has the lowest training loss of the four designs (seed spread only)",
                    "verdict": "finding" if all(v == "finding" for v in verdicts.values()) else "not a finding",
                    "ranking": order,
                    "values": {d: f"{loss[d]['mean']:.4f} [{loss[d]['ci'][0]:.4f}, {loss[d]['ci'][1]:.4f}]"
                               for d in order},
                    "against": verdicts})
    if "in-context" in runs:
        zero, rz = final_replicates(runs[best], "final_unguided", FD_NAME, seed=1)
        _, ri = final_replicates(runs["in-context"], "final_unguided", FD_NAME, seed=2)
        ratio = ri / rz
        lo, hi = np.percentile(ratio, [2.5, 97.5])
        ic = runs["in-context"]["summary"][-1]["final_unguided"][FD_NAME]["mean"]
        out.append({"claim": "in-context's Fréchet distance is about twice adaLN-Zero's (paper: 35.24 / 19.47 = 1.81)",
                    "ratio": ic / zero["mean"], "ci": [float(lo), float(hi)],
                    "verdict": "finding" if lo > 1 else "not a finding"})
    return out


def _mode_name(mode):
    return {"final_unguided": "unguided", "final_guided": "guided", "unguided": "unguided"}[mode]


def correlation(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return float(np.corrcoef(x, y)[0, 1])


def scaling_findings(runs):
    """Smaller patch and bigger model better (pairwise, from the intervals), quality against
    log Gflops (Pearson r with a two-level bootstrap interval), and compute-matched comparisons."""
    out = []
    fin = {n: r["summary"][-1] for n, r in runs.items()}
    sizes = list(SIZES)
    for mode in ("final_unguided", "final_guided"):
        for metric in METRICS:
            for a in runs:
                for b in runs:
                    ra, rb = runs[a], runs[b]
                    if ra["size"] == rb["size"] and ra["patch"] < rb["patch"] and ra["patch"] * 2 == rb["patch"]:
                        what = f"{a} (smaller patch) beats {b}"
                    elif ra["patch"] == rb["patch"] and sizes.index(ra["size"]) == sizes.index(rb["size"]) + 1:
                        what = f"{a} (bigger model) beats {b}"
                    else:
                        continue
                    va, vb = fin[a][mode][metric], fin[b][mode][metric]
                    out.append({"claim": f"{what} on {_mode_name(mode)} {metric}", "verdict": better(va, vb, metric),
                                "values": {a: _fmt(va, metric), b: _fmt(vb, metric)}})
    names = list(runs)
    if len(names) >= 3:
        logg = [np.log10(runs[n]["gflops"]) for n in names]
        for mode in ("final_unguided", "final_guided"):
            for metric in METRICS:
                reps = np.stack([final_replicates(runs[n], mode, metric, seed=i)[1] for i, n in enumerate(names)])
                r = correlation(logg, [fin[n][mode][metric]["mean"] for n in names])
                rb = np.array([correlation(logg, reps[:, j]) for j in range(reps.shape[1])])
                lo, hi = np.nanpercentile(rb, [2.5, 97.5])
                sign = -1 if METRICS[metric] == "lower" else 1  # the paper: more Gflops, better quality
                out.append({"claim": f"{_mode_name(mode)} {metric} improves with log10 Gflops "
                                     f"(Pearson r over {len(names)} models)",
                            "r": r, "ci": [float(lo), float(hi)],
                            "verdict": "finding" if (hi < 0 if sign < 0 else lo > 0) else "not a finding"})
    # Gflops against parameters (the paper's S/2 against B/4): pairs in which one model has more
    # Gflops and the other at least twice the parameters
    for a in names:
        for b in names:
            ra, rb = runs[a], runs[b]
            if ra["gflops"] > rb["gflops"] and 2 * ra["params"] <= rb["params"]:
                for mode in ("final_unguided", "final_guided"):
                    for metric in METRICS:
                        va, vb = fin[a][mode][metric], fin[b][mode][metric]
                        out.append({"claim": f"{a} (more Gflops: {ra['gflops']:.3g} vs {rb['gflops']:.3g}) beats {b} "
                                             f"(more parameters: {rb['params']:,} vs {ra['params']:,}) on "
                                             f"{_mode_name(mode)} {metric}",
                                    "verdict": better(va, vb, metric),
                                    "values": {a: _fmt(va, metric), b: _fmt(vb, metric)}})
    # compute-matched: the bigger-Gflops model's evaluation at no more training compute than the
    # smaller model's last one, against that last one (unguided Fréchet distance of the curves'
    # evaluations, which all have the same number of samples)
    for a in names:
        for b in names:
            if runs[b]["gflops"] <= runs[a]["gflops"]:
                continue
            c_a = runs[a]["summary"][-1]["train_compute_gflops"]
            earlier = [e for e in runs[b]["summary"] if e["train_compute_gflops"] <= c_a]
            if not earlier:
                continue
            eb, ea = earlier[-1], runs[a]["summary"][-1]
            out.append({"claim": f"{b} at step {eb['step']} beats {a} at step {ea['step']} with no more training "
                                 f"compute ({eb['train_compute_gflops']:.3g} <= {c_a:.3g} Gflops), unguided {FD_NAME}",
                        "verdict": better(eb["unguided"][FD_NAME], ea["unguided"][FD_NAME], FD_NAME),
                        "opposite": better(ea["unguided"][FD_NAME], eb["unguided"][FD_NAME], FD_NAME),
                        "values": {b: _fmt(eb["unguided"][FD_NAME], FD_NAME),
                                   a: _fmt(ea["unguided"][FD_NAME], FD_NAME)}})
    return out


def sampling_findings(runs):
    """Does the smaller model, at its best number of sampling steps, reach the bigger one at no
    more sampling compute? And does each model improve with more steps?"""
    out = []
    names = sorted(runs, key=lambda n: runs[n]["gflops"])
    for n in names:
        c = runs[n]["curve"]
        rho = np.corrcoef(np.argsort(np.argsort([e["sampling_steps"] for e in c])),
                          np.argsort(np.argsort([e[FD_NAME] for e in c])))[0, 1]
        out.append({"claim": f"{n}: more sampling steps lower the Fréchet distance (Spearman of FD with steps)",
                    "rho": float(rho)})
    for i, small in enumerate(names):
        for big in names[i + 1:]:
            cs = runs[small]["curve"]
            best = min(cs, key=lambda e: e[FD_NAME])
            budget = max(e["sampling_compute_gflops"] for e in cs)
            cands = [e for e in runs[big]["curve"] if e["sampling_compute_gflops"] <= budget]
            if not cands:
                continue
            eb = min(cands, key=lambda e: e[FD_NAME])
            va = {"mean": eb[FD_NAME], "ci": eb[FD_NAME + "_ci"]}
            vb = {"mean": best[FD_NAME], "ci": best[FD_NAME + "_ci"]}
            out.append({"claim": f"{big} with {eb['sampling_steps']} steps ({eb['sampling_compute_gflops']:.3g} Gflops "
                                 f"per image) beats {small}'s best ({best['sampling_steps']} steps), though {small} "
                                 f"may spend up to {budget:.3g}",
                        "verdict": better(va, vb, FD_NAME),
                        "values": {big: _fmt(va, FD_NAME), small: _fmt(vb, FD_NAME)}})
    return out


def run_block_designs(fast, log=print, runs_dir=None, device=None, on_progress=None):
    ex = Experiment(fast, runs_dir, device, log)
    models = {block: ("Tiny", 1, block) for block in BLOCK_DESIGNS}  # the registry, in Table 4's order

    def progress(runs):
        if on_progress:
            on_progress({"budget": ex.budget, "recipe": RECIPE, "runs": runs, "complete": False})

    runs = ex.grid(models, progress)
    return {"budget": ex.budget, "recipe": RECIPE, "runs": runs, "findings": block_design_findings(runs),
            "complete": True}


def run_scaling(fast, log=print, runs_dir=None, device=None, on_progress=None):
    ex = Experiment(fast, runs_dir, device, log)
    models = {f"{size}/{patch}": (size, patch, "adaLN-Zero") for size in SIZES for patch in PATCHES}

    def progress(runs):
        if on_progress:
            on_progress({"budget": ex.budget, "recipe": RECIPE, "runs": runs, "complete": False})

    runs = ex.grid(models, progress)
    return {"budget": ex.budget, "recipe": RECIPE, "runs": runs, "findings": scaling_findings(runs),
            "complete": True}


def run_sampling_compute(fast, log=print, runs_dir=None, device=None, on_progress=None):
    ex = Experiment(fast, runs_dir, device, log)
    b = ex.budget
    runs = {}
    for name in SAMPLING_MODELS:
        size, patch = name.split("/")
        patch = int(patch)
        seed = b["seeds"][0]
        out = ex.train(size, patch, "adaLN-Zero", seed)
        cfg = make_cfg(size, patch, fast=fast)
        curve = []
        for n in b["sampling_steps"]:
            e = ex.evaluate(out, b["steps"], b["final_per_class"], 1.0, sample_steps=n)
            e = dict(e, sampling_compute_gflops=sampling_compute(cfg, n))
            e.pop("bootstrap")
            curve.append(e)
            log(f"  {name} with {n} sampling steps: class acc {100 * e['class_accuracy']:.1f}%, FD {e[FD_NAME]:.2f}")
        runs[name] = {"size": size, "patch": patch, "gflops": gflops(cfg), "params": count_params(cfg)["trainable"],
                      "seed": seed, "step": b["steps"], "run_dir": str(out), "curve": curve}
        if on_progress:
            on_progress({"budget": b, "recipe": RECIPE, "runs": runs, "complete": False})
    return {"budget": b, "recipe": RECIPE, "runs": runs, "findings": sampling_findings(runs), "complete": True}


# The budget study: the best model of the grid (Tiny/1, adaLN-Zero, seed 0) trained longer than the
# experiments and scored every eval_every steps; points: where it is also scored on the final
# evaluation's sample count, unguided and guided.
STUDY = dict(steps=3000, eval_every=250, points=(1000, 2000, 3000))
STUDY_FAST = dict(steps=4, eval_every=2, points=(4,))
CHANCE = 0.1


def run_budget(fast, log=print, runs_dir=None, device=None, on_progress=None):
    """How long the best teaching model needs before its unguided class accuracy is clearly
    above chance (the lower end of its 95% interval above twice chance, 20%), and how the
    guided accuracy and the distances move meanwhile: the measurement the experiments' steps
    are chosen from. Evaluates the checkpoints its run folder holds at multiples of
    eval_every (a folder first trained by another experiment has them every 500 steps only)."""
    ex = Experiment(fast, runs_dir, device, log)
    study = STUDY_FAST if fast else STUDY
    ex.budget = b = dict(ex.budget, steps=study["steps"], eval_every=study["eval_every"])
    out = ex.train("Tiny", 1, "adaLN-Zero", b["seeds"][0])
    history = []
    for s in sorted(_checkpoint_steps(out)):
        if s % study["eval_every"] or s > study["steps"]:
            continue
        e = {"step": s, "loss": _loss_at(out, s), "unguided": ex.evaluate(out, s, b["per_class"])}
        if s in study["points"]:
            e["final_unguided"] = ex.evaluate(out, s, b["final_per_class"])
            e["final_guided"] = ex.evaluate(out, s, b["final_per_class"], b["guidance"])
        for mode in MODES:
            if mode in e:
                e[mode] = {k: v for k, v in e[mode].items() if k != "bootstrap"}
        history.append(e)
        log(f"  step {s}: unguided class acc {100 * e['unguided']['class_accuracy']:.1f}% "
            f"[{100 * e['unguided']['class_accuracy_ci'][0]:.1f}, {100 * e['unguided']['class_accuracy_ci'][1]:.1f}]")
    above = [e["step"] for e in history if e["unguided"]["class_accuracy_ci"][0] > 2 * CHANCE]
    return {"budget": b, "recipe": RECIPE, "study": study, "run_dir": str(out),
            "train_seconds": _train_seconds(out, study["steps"]),
            "model": "Tiny/1", "runs": {"Tiny/1": {"history": history}},
            "first_step_clearly_above_chance": above[0] if above else None, "complete": True}


EXPERIMENTS = {"budget": run_budget, "block-designs": run_block_designs, "scaling": run_scaling,
               "sampling-compute": run_sampling_compute}


def _save(fig, path):
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=100)


def _band(ax, xs, vals, label, scale=1.0, marker="o"):
    mean = np.array([v["mean"] for v in vals]) * scale
    lo = np.array([v["ci"][0] for v in vals]) * scale
    hi = np.array([v["ci"][1] for v in vals]) * scale
    line, = ax.plot(xs, mean, marker=marker, label=label)
    ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.2)
    return line


def _over_training(runs, name, out):
    fig = figure(figsize=(11, 3.8))
    axes = fig.subplots(1, 3)
    for label, r in runs.items():
        s = r["summary"]
        steps = [e["step"] for e in s]
        _band(axes[0], steps, [e["unguided"][FD_NAME] for e in s], label)
        _band(axes[1], steps, [e["unguided"]["class_accuracy"] for e in s], label, 100)
        _band(axes[2], steps, [e["loss"] for e in s], label)
    n = next(iter(runs.values()))["summary"][0]["unguided"]["n_samples"]
    axes[0].set(xlabel="training step", ylabel=f"{FD_NAME} (lower is better)",
                title=f"Fréchet distance, unguided, {n} samples")
    axes[1].set(xlabel="training step", ylabel="class accuracy of samples (%)",
                title=f"class accuracy, unguided, {n} samples")
    axes[1].axhline(10, color="gray", lw=0.8, ls=":")
    axes[2].set(xlabel="training step", ylabel="training loss (mean of 50 steps)", title="training loss", yscale="log")
    axes[0].legend(fontsize=7)
    fig.suptitle("mean over seeds; bands: 95% two-level bootstrap (seeds, then samples)", fontsize=8)
    fig.tight_layout()
    path = out / f"{name}_over_training.png"
    _save(fig, path)
    return path


def _final_bars(runs, name, out):
    fig = figure(figsize=(11, 3.6))
    axes = fig.subplots(1, 3)
    labels = list(runs)
    n = runs[labels[0]]["summary"][-1]["final_unguided"]["n_samples"]
    panels = [("final_unguided", FD_NAME, 1, f"FD, unguided, {n} samples (lower is better)"),
              ("final_unguided", "class_accuracy", 100, f"class accuracy %, unguided, {n} samples"),
              ("final_guided", "class_accuracy", 100, f"class accuracy %, guidance 4, {n} samples")]
    for ax, (mode, metric, scale, title) in zip(axes, panels):
        vals = [runs[n]["summary"][-1][mode][metric] for n in labels]
        mean = np.array([v["mean"] for v in vals]) * scale
        err = np.array([[v["mean"] - v["ci"][0], v["ci"][1] - v["mean"]] for v in vals]).T * scale
        ax.bar(range(len(labels)), mean, yerr=err, capsize=4, color="tab:blue", alpha=0.7)
        for j, n in enumerate(labels):
            ax.scatter([j] * len(runs[n]["summary"][-1][mode][metric]["seeds"]),
                       np.array(runs[n]["summary"][-1][mode][metric]["seeds"]) * scale, color="k", s=10, zorder=3)
        ax.set_xticks(range(len(labels)), labels, rotation=30, fontsize=7)
        ax.set(title=title, ylabel=title.split(",")[0])
    step = runs[labels[0]]["summary"][-1]["step"]
    fig.suptitle(f"step {step}: bars = mean over seeds with 95% two-level bootstrap interval; dots = seeds", fontsize=8)
    fig.tight_layout()
    path = out / f"{name}_final.png"
    _save(fig, path)
    return path


def plot(name, result, out):
    """The figures of each experiment, as PNGs with labelled axes and error bars."""
    runs = result["runs"]
    paths = []
    if name in ("block-designs", "scaling"):
        paths += [_over_training(runs, name, out), _final_bars(runs, name, out)]
    if name == "scaling":
        fig = figure(figsize=(11, 3.8))
        axes = fig.subplots(1, 3)
        corr = {f["claim"].split(" improves")[0]: f for f in result.get("findings", []) if "r" in f}
        for ax, (mode, metric, scale) in zip(axes[:2], [("final_unguided", FD_NAME, 1),
                                                       ("final_unguided", "class_accuracy", 100)]):
            for label, r in runs.items():
                v = r["summary"][-1][mode][metric]
                ax.errorbar(r["gflops"], v["mean"] * scale, yerr=[[(v["mean"] - v["ci"][0]) * scale],
                                                                  [(v["ci"][1] - v["mean"]) * scale]],
                            fmt="o", capsize=3)
                ax.annotate(label, (r["gflops"], v["mean"] * scale), fontsize=7, xytext=(4, 4),
                            textcoords="offset points")
            f = corr.get(f"{_mode_name(mode)} {metric}")
            note = f" (r = {f['r']:.2f} [{f['ci'][0]:.2f}, {f['ci'][1]:.2f}])" if f else ""
            n = next(iter(runs.values()))["summary"][-1][mode]["n_samples"]
            ax.set(xscale="log", xlabel="Gflops per forward pass",
                   ylabel=(f"final {FD_NAME}, {n} samples" if metric == FD_NAME
                           else f"final class accuracy (%), {n} samples"),
                   title=f"quality against Gflops{note}")
            ax.title.set_fontsize(8)
        ax = axes[2]
        pts = []
        for label, r in runs.items():
            s = r["summary"]
            xs = [e["train_compute_gflops"] for e in s]
            _band(ax, xs, [e["unguided"][FD_NAME] for e in s], label)
            pts += [(x, e["unguided"][FD_NAME]["mean"]) for x, e in zip(xs, s)]
        pts.sort()
        frontier, best = [], np.inf
        for x, y in pts:
            if y < best:
                frontier.append((x, y))
                best = y
        ax.plot(*zip(*frontier), color="k", ls="--", lw=1, label="frontier")
        n = next(iter(runs.values()))["summary"][0]["unguided"]["n_samples"]
        ax.set(xscale="log", xlabel="training compute (Gflops x batch x steps x 3)",
               ylabel=f"{FD_NAME}, unguided, {n} samples", title="quality against training compute")
        ax.legend(fontsize=6)
        fig.tight_layout()
        paths.append(out / "scaling_vs_compute.png")
        _save(fig, paths[-1])
    if name == "budget":
        h = runs["Tiny/1"]["history"]
        fig = figure(figsize=(11, 3.8))
        axes = fig.subplots(1, 3)
        for ax, metric, scale in ((axes[0], "class_accuracy", 100), (axes[1], FD_NAME, 1)):
            for mode, label, marker in (("unguided", "unguided, {} samples", "o"),
                                        ("final_unguided", "unguided, {} samples", "s"),
                                        ("final_guided", "guidance {:g}, {} samples", "^")):
                pts = [e for e in h if mode in e]
                if pts:
                    label = label.format(*([result["budget"]["guidance"]] if mode == "final_guided" else []),
                                         pts[0][mode]["n_samples"])
                    _band(ax, [e["step"] for e in pts], [{"mean": e[mode][metric], "ci": e[mode][metric + "_ci"]}
                                                          for e in pts], label, scale, marker)
        axes[0].axhline(100 * CHANCE, color="gray", ls=":", lw=1)
        axes[0].axhline(200 * CHANCE, color="gray", ls="--", lw=0.8)
        axes[0].set(xlabel="training step", ylabel="class accuracy of samples (%)",
                    title="class accuracy (dotted: chance; dashed: twice chance)")
        axes[1].set(xlabel="training step", ylabel=f"{FD_NAME} (lower is better)", title="Fréchet distance")
        axes[2].plot([e["step"] for e in h], [e["loss"] for e in h], marker="o")
        axes[2].set(xlabel="training step", ylabel="training loss (mean of 50 steps)", title="training loss")
        axes[0].legend(fontsize=7)
        for ax in axes[:2]:
            ax.title.set_fontsize(9)
        fig.suptitle("budget study: Tiny/1 adaLN-Zero, seed 0; bands: 95% bootstrap over the samples", fontsize=8)
        fig.tight_layout()
        paths.append(out / "budget.png")
        _save(fig, paths[-1])
    if name == "sampling-compute":
        fig = figure(figsize=(10, 3.8))
        axes = fig.subplots(1, 2)
        for label, r in runs.items():
            c = r["curve"]
            xs = [e["sampling_compute_gflops"] for e in c]
            for ax, metric, scale in ((axes[0], FD_NAME, 1), (axes[1], "class_accuracy", 100)):
                _band(ax, xs, [{"mean": e[metric], "ci": e[metric + "_ci"]} for e in c],
                      f"{label} ({r['gflops']:.3g} Gflops)", scale)
                for e in c:
                    ax.annotate(str(e["sampling_steps"]), (e["sampling_compute_gflops"], e[metric] * scale), fontsize=6)
        axes[0].set(xscale="log", xlabel="sampling compute per image (Gflops x steps)", ylabel=f"{FD_NAME}, unguided",
                    title="quality against sampling compute (labels: steps)")
        axes[1].set(xscale="log", xlabel="sampling compute per image (Gflops x steps)",
                    ylabel="class accuracy (%), unguided", title="class accuracy against sampling compute")
        axes[0].legend(fontsize=7)
        fig.suptitle("bands: 95% bootstrap interval over the samples (one training seed)", fontsize=8)
        fig.tight_layout()
        paths.append(out / "sampling_compute.png")
        _save(fig, paths[-1])
    return paths


def compute_seconds(result):
    """Seconds of training and sampling that the result's numbers cost, from its run records
    (the same whether the runs were made by this command or found in the runs folder; a run that
    two experiments share counts in both)."""
    def evals(e):
        return sum(e[m].get("seconds", 0) for m in MODES if m in e)
    total = 0.0
    for r in result["runs"].values():
        if "curve" in r:
            total += sum(e.get("seconds", 0) for e in r["curve"])
        for run in (r.get("seeds") or {}).values():
            total += run.get("train_seconds", 0) + sum(evals(e) for e in run["history"])
        if "history" in r:  # the budget study
            total += result.get("train_seconds", 0) + sum(evals(e) for e in r["history"])
    return round(total, 1)


def summary_markdown(name, result):
    """The result as a Markdown page (tables of the final values with their intervals, and the
    verdicts), written beside the JSON as SUMMARY.md."""
    b = result["budget"]
    lines = [f"# {name}", "",
             f"`{result.get('command', '')}` at revision {result.get('revision')}, "
             f"{'complete' if result.get('complete') else 'PARTIAL (still running or interrupted)'}; "
             f"its runs' training and sampling took {compute_seconds(result) / 60:.0f} min, this command "
             f"{result.get('seconds', 0) / 60:.0f} min, on {result.get('machine')}, float32 matmul "
             f"{result.get('matmul_gflops_start')} GFLOP/s at the start"
             + (f", {result['matmul_gflops_end']} at the end." if result.get("matmul_gflops_end") else "."), ""]
    if len(result.get("invocations") or []) > 1:
        lines += ["Invocations that wrote this file (a later one that found every run done only re-read them):", ""]
        lines += [f"- {i.get('started') or 'start not recorded'}, revision {i.get('revision')}: {i.get('seconds')} s, "
                  f"matmul {i.get('matmul_gflops_start')}-{i.get('matmul_gflops_end')} GFLOP/s"
                  f"{'' if i.get('complete') else ' (partial)'}" for i in result["invocations"]]
        lines += [""]
    lines += [
             f"Recipe: latents of {VAE}, lr {RECIPE['lr']:g} (constant after {RECIPE['warmup']} warm-up steps), "
             f"batch {b['batch']}, EMA {RECIPE['ema']}; {b['steps']} steps; "
             + (f"training seed {b['seeds'][0]}. " if name in ("budget", "sampling-compute") else
                f"training seeds {list(b['seeds'])}. ") +
             (f"Samples: {10 * b['final_per_class']} unguided per point, DDPM with the steps listed, sample seed "
                f"{b['sample_seed']}, from the EMA at the last step; " if name == "sampling-compute" else
                f"Samples: DDPM {b['sample_steps']}, sample seed {b['sample_seed']}; {10 * b['per_class']} unguided "
                f"at every evaluation step (the curves over training), and at the last step also "
                f"{10 * b['final_per_class']} unguided and {10 * b['final_per_class']} with guidance {b['guidance']:g} "
                f"(the tables, bars and verdicts); ")
             + f"against {b['num_real']} real test images. Intervals: 95%, "
             + ("bootstrap over the samples." if name in ("budget", "sampling-compute") else
                "two-level bootstrap (seeds, then samples); values are means over the seeds."), ""]
    runs = result["runs"]

    def cell(v, metric):
        return _fmt(v, metric) if v else "-"

    if name in ("block-designs", "scaling"):
        lines += ["| model | Gflops | params | loss | unguided FD | unguided class acc. | guided FD | "
                  "guided class acc. | seeds |", "|---|---|---|---|---|---|---|---|---|"]
        for n, r in runs.items():
            last = r["summary"][-1]
            g = last.get("final_guided", {})
            loss = last["loss"]
            lines.append(f"| {n} | {r['gflops']:.4f} | {r['params']:,} | "
                         f"{loss['mean']:.4f} [{loss['ci'][0]:.4f}, {loss['ci'][1]:.4f}] | "
                         f"{cell(last['final_unguided'][FD_NAME], FD_NAME)} | "
                         f"{cell(last['final_unguided']['class_accuracy'], 'class_accuracy')} | "
                         f"{cell(g.get(FD_NAME), FD_NAME)} | {cell(g.get('class_accuracy'), 'class_accuracy')} | "
                         f"{last['n_seeds']} |")
    elif name == "sampling-compute":
        lines += ["| model | DDPM steps | sampling Gflops / image | FD | class acc. |", "|---|---|---|---|---|"]
        for n, r in runs.items():
            for e in r["curve"]:
                lines.append(f"| {n} | {e['sampling_steps']} | {e['sampling_compute_gflops']:.3g} | "
                             f"{cell({'mean': e[FD_NAME], 'ci': e[FD_NAME + '_ci']}, FD_NAME)} | "
                             f"{cell({'mean': e['class_accuracy'], 'ci': e['class_accuracy_ci']}, 'class_accuracy')} |")
    elif name == "budget":
        lines += ["| step | loss | unguided FD | unguided class acc. | n | guided FD | guided class acc. |",
                  "|---|---|---|---|---|---|---|"]
        for e in runs["Tiny/1"]["history"]:
            for mode in ("unguided", "final_unguided"):
                if mode not in e:
                    continue
                u, g = e[mode], e.get("final_guided") if mode == "final_unguided" else None
                lines.append(f"| {e['step']} | {e['loss']:.4f} | "
                             f"{cell({'mean': u[FD_NAME], 'ci': u[FD_NAME + '_ci']}, FD_NAME)} | "
                             f"{cell({'mean': u['class_accuracy'], 'ci': u['class_accuracy_ci']}, 'class_accuracy')} | "
                             f"{u['n_samples']} | "
                             + (f"{cell({'mean': g[FD_NAME], 'ci': g[FD_NAME + '_ci']}, FD_NAME)} | "
                                f"{cell({'mean': g['class_accuracy'], 'ci': g['class_accuracy_ci']}, 'class_accuracy')} |"
                                if g else "| |"))
        lines += ["", f"First step whose unguided class accuracy is clearly above chance (95% interval above "
                      f"{200 * CHANCE:.0f}%): {result.get('first_step_clearly_above_chance')}."]
    if result.get("findings"):
        lines += ["", "## Verdicts", ""]
        for f in result["findings"]:
            extra = ""
            if "ci" in f and "r" in f:
                extra = f" r = {f['r']:+.2f} [{f['ci'][0]:+.2f}, {f['ci'][1]:+.2f}]."
            elif "ratio" in f:
                extra = f" ratio {f['ratio']:.2f} [{f['ci'][0]:.2f}, {f['ci'][1]:.2f}]."
            elif "rho" in f:
                extra = f" rho = {f['rho']:+.2f}."
            if "values" in f:
                extra += " " + "; ".join(f"{k} {v}" for k, v in f["values"].items()) + "."
            if f.get("opposite") == "finding":
                extra += " The opposite is a finding: the model with fewer Gflops is better at this compute."
            if "against" in f:
                sep = [d for d, v in f["against"].items() if v == "finding"]
                extra += (f" Separated from: {', '.join(sep) or 'none'}; not from: "
                          f"{', '.join(d for d in f['against'] if d not in sep) or 'none'}.")
            verdict = f"**{f['verdict']}**: " if "verdict" in f else ""
            lines.append(f"- {verdict}{f['claim']}.{extra}")
    return "\n".join(lines) + "\n"


def matmul_rate(n=2048, repeats=3):
    """The machine's float32 matrix-product rate in GFLOP/s (best of `repeats`), as
    benchmarks/bench_matmul.py measures it; every result file states it."""
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t)
    return round(2 * n ** 3 / best / 1e9, 1)


def revision():
    """The code's git revision (with '+changes' when the tree differs), or None outside a checkout."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (rev + ("+changes" if dirty else "")) or None


INVOCATION_KEYS = ("started", "command", "revision", "seconds", "matmul_gflops_start", "matmul_gflops_end",
                   "complete")


def _run(args, argv):
    set_device(args.device)
    out = Path(args.out or f"results/{args.name}")
    runs_dir = Path(args.runs) if args.runs else (out / "runs" if args.fast else Path("runs/experiments"))
    for flag, folder in (("--out", out), ("--runs", runs_dir)):
        for parent in [folder, *folder.resolve().parents]:
            if parent.exists():
                if not parent.is_dir():
                    raise FileExistsError(f"{flag} {folder}: {parent} is a file, not a folder")
                break
    t0 = time.perf_counter()
    info = dict(experiment=args.name, fast=args.fast,
                command="python -m minidit.experiments " + " ".join(shlex.quote(a) for a in argv),
                machine=f"{platform.machine()}, {platform.system()}, {os.cpu_count()} CPUs, "
                        f"Python {platform.python_version()}, NumPy {np.__version__}",
                matmul_gflops_start=matmul_rate(), revision=revision(), runs_folder=str(runs_dir))

    # earlier invocations that wrote this file (a rerun that finds every run done only re-reads
    # them: its own time and matmul rate say nothing about the computation, theirs do)
    earlier = []
    try:
        old = json.loads((out / f"{args.name}.json").read_text())
        same = (old.get("experiment") == args.name and old.get("fast") == args.fast and old.get("recipe") == RECIPE
                and old.get("runs_folder") == str(runs_dir))  # not a file of an older design of the experiment
        if same:
            earlier = old.get("invocations") or [{k: old.get(k) for k in INVOCATION_KEYS}]
    except (OSError, ValueError):
        pass
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")

    def write(result):
        result = dict(result, **info, seconds=round(time.perf_counter() - t0, 1), started=started)
        result["compute_seconds"] = compute_seconds(result)
        if result.get("complete"):
            result["matmul_gflops_end"] = matmul_rate()
        result["invocations"] = earlier + [{k: result.get(k) for k in INVOCATION_KEYS}]
        try:
            out.mkdir(parents=True, exist_ok=True)
            with atomic_write(out / f"{args.name}.json") as tmp:
                tmp.write_text(json.dumps(result, indent=1))
            if result["runs"]:
                with atomic_write(out / "SUMMARY.md") as tmp:
                    tmp.write_text(summary_markdown(args.name, result))
            # figures after every run in a full experiment (seconds against minutes), at the end in a fast one
            figures = result["runs"] and (result.get("complete") or not args.fast)
            return [out / f"{args.name}.json", *(plot(args.name, result, out) if figures else [])]
        except OSError as e:
            raise CommandFailed(f"could not write the results in {out}: {e.strerror or e} ({e.filename})") from e

    try:
        result = EXPERIMENTS[args.name](args.fast, runs_dir=runs_dir, device=args.device, on_progress=write)
    except KeyboardInterrupt as e:
        raise type(e)(f"{'terminated' if type(e).__name__ == 'Terminated' else 'interrupted'} during the "
                      f"{args.name} experiment; the finished runs are in {runs_dir} and {out}, and the same "
                      f"command continues from them") from None
    for p in write(result):
        print(f"wrote {p}")
    print(f"{args.name} took {time.perf_counter() - t0:.0f} s")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = CommandParser(prog="python -m minidit.experiments", description=__doc__.splitlines()[0])
    ap.add_argument("name", choices=list(EXPERIMENTS))
    ap.add_argument("--fast", action="store_true", help="tiny models and budgets (seconds; for tests)")
    ap.add_argument("--out", default=None, help="output folder (default results/NAME)")
    ap.add_argument("--runs", default=None, help="folder of the training runs (default runs/experiments; "
                                                 "with --fast, OUT/runs)")
    ap.add_argument("--device", default=None, help="cpu (default), gpu or auto")
    return run_command(ap, lambda args: _run(args, argv), argv)


if __name__ == "__main__":
    sys.exit(main())
