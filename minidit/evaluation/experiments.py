"""The paper's section 5 experiments at teaching scale (docs/paper.md §0): block designs,
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

The module is about 430 lines because the four experiments, the runner they share and their
command read best together; the error bars are in statistics.py, the verdicts in findings.py and
the figures and SUMMARY.md pages in report.py (their names are re-exported here).
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

from ..backend import set_device
from ..blocks import BLOCK_DESIGNS
from ..cli import CommandFailed, CommandParser, atomic_write, check_output_folder, is_temporary, run_command
from ..doctor import matmul_gflops
from ..flops import count_params, gflops, sampling_compute
from ..latent.autoencoder import load_vae_decoder
from ..model import DiT_models
from ..commands import train as train_command
from ..training.checkpoint import checkpoints_of, find_vae, load_model, shipped_file
from ..training.data import load_dataset
from ..training.rundir import foreign_files, refuse_foreign
from ..commands.sample import generate
from .classifier import load_classifier
from .evaluate import DEFAULT_CLASSIFIER, FD_NAME, evaluate_samples
from .findings import PAPER_BEST, PAPER_WORST, block_design_findings, sampling_findings, scaling_findings
from .report import compute_seconds, plot, summary_markdown
from .statistics import (CHANCE, METRICS, MODES, better, bootstrap, combine, correlation, final_replicates,
                         interval, strip, summarise)

# the names a reader of this module (and notebook 09) uses, whichever module defines them
__all__ = ["SIZES", "PATCHES", "VAE", "RECIPE", "FULL", "FAST", "STUDY", "SAMPLING_MODELS", "EXPERIMENTS",
           "Experiment", "make_cfg", "run_name", "train_arguments", "run_budget", "run_block_designs", "run_scaling",
           "run_sampling_compute", "main", "CHANCE", "METRICS", "MODES", "better", "bootstrap", "combine",
           "correlation", "final_replicates", "interval", "strip", "summarise", "PAPER_BEST", "PAPER_WORST",
           "block_design_findings", "sampling_findings", "scaling_findings", "compute_seconds", "plot",
           "summary_markdown"]

# Our own model sizes (depth, width, heads); not the paper's S/B/L/XL.
SIZES = {"XS": (2, 64, 2), "Tiny": (4, 128, 4)}
# Patch sizes on the VAE's 8x8x4 latents of the 32x32 images: 4, 16 and 64 tokens, as the paper's
# /8, /4 and /2 give 16, 64 and 256 tokens on its 32x32x4 latents.
PATCHES = (4, 2, 1)
VAE = "data/vae_shapes32.npz"
# The main job's recipe (docs/main_job.md): latents of the shipped VAE, AdamW at 2e-3 after 100 warm-up
# steps, batch 32, EMA 0.998. One change: the learning rate stays constant after the warm-up, as
# in the paper, instead of the main job's cosine decay, so that a checkpoint at step s is the same
# whatever the run's length and the curves "quality over training" mean what they say.
RECIPE = dict(lr=2e-3, batch=32, ema=0.998, warmup=100)
# Budgets. Steps from the study in results/experiments-budget/ (docs/experiments.md): the best model's unguided
# class accuracy is clearly above chance (95% interval above 20%) from step 1750; 2000 is the next
# point of the 500-step evaluation grid. Every evaluation step scores per_class samples of every
# class, unguided (the curves over training); the last step adds final_per_class samples, unguided
# and guided (the tables, bars and verdicts).
FULL = dict(steps=2000, batch=RECIPE["batch"], eval_every=500, per_class=10, final_per_class=30, sample_steps=50,
            guidance=4.0, seeds=(0, 1), sample_seed=1, bootstrap=200, sampling_steps=(5, 10, 25, 50, 100, 250),
            num_images=None, num_real=1000)
FAST = dict(steps=4, batch=4, eval_every=2, per_class=1, final_per_class=2, sample_steps=2, guidance=4.0,
            seeds=(0, 1), sample_seed=1, bootstrap=50, sampling_steps=(2, 4), num_images=64, num_real=100)
SAMPLING_MODELS = ("XS/1", "Tiny/2", "Tiny/1")  # sampling-compute: three Gflops, seed 0


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


def _grid_experiment(models, findings, fast, log, runs_dir, device, on_progress):
    """Every seed of every model of `models` ({name: (size, patch, block)}), then the verdicts
    of `findings`; on_progress gets the partial result after every finished run."""
    ex = Experiment(fast, runs_dir, device, log)

    def progress(runs):
        if on_progress:
            on_progress({"budget": ex.budget, "recipe": RECIPE, "runs": runs, "complete": False})

    runs = ex.grid(models, progress)
    return {"budget": ex.budget, "recipe": RECIPE, "runs": runs, "findings": findings(runs), "complete": True}


def run_block_designs(fast, log=print, runs_dir=None, device=None, on_progress=None, designs=None):
    """designs: the block designs to compare (default: every one of the registry, in Table 4's order)."""
    designs = BLOCK_DESIGNS if designs is None else designs
    unknown = [d for d in designs if d not in BLOCK_DESIGNS]
    if unknown:
        raise ValueError(f"unknown block design(s) {', '.join(unknown)}: choose from {', '.join(BLOCK_DESIGNS)}")
    models = {block: ("Tiny", 1, block) for block in designs}
    return _grid_experiment(models, block_design_findings, fast, log, runs_dir, device, on_progress)


def run_scaling(fast, log=print, runs_dir=None, device=None, on_progress=None):
    models = {f"{size}/{patch}": (size, patch, "adaLN-Zero") for size in SIZES for patch in PATCHES}
    return _grid_experiment(models, scaling_findings, fast, log, runs_dir, device, on_progress)


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


FIGURES = ("{name}_over_training.png", "{name}_final.png", "scaling_vs_compute.png", "budget.png",
           "sampling_compute.png")


def check_results_folder(out, name, runs_dir):
    """FileExistsError unless `out` is new, empty, or holds this experiment's own results (its
    NAME.json, SUMMARY.md and figures, and the runs folder when it lies inside): a folder with
    anything else, or with a SUMMARY.md but no NAME.json of this experiment, is a user's."""
    runs = Path(runs_dir).resolve()
    own = {f"{name}.json", "SUMMARY.md", *(f.format(name=name) for f in FIGURES)}

    def ours(p):
        if is_temporary(p.name):
            return True
        if p.is_dir():
            return p.resolve() == runs
        return p.name in own
    foreign = foreign_files(out, ours)
    if foreign:
        raise refuse_foreign(out, foreign)
    present = [p for p in foreign_files(out, lambda p: is_temporary(p.name) or p.resolve() == runs)]
    if present:
        try:
            mine = json.loads((Path(out) / f"{name}.json").read_text()).get("experiment") == name
        except (OSError, ValueError, AttributeError):
            mine = False
        if not mine:
            raise FileExistsError(f"--out {out} holds {present[0].name} but no {name}.json of this experiment, "
                                  f"so the experiment did not write it; move it, or choose another --out")


def _run(args, argv):
    device = set_device(args.device)

    def matmul_rate():  # the device's float32 matrix-product rate, as minidit.doctor measures it
        return round(matmul_gflops(device), 1)

    out = Path(args.out or f"results/{args.name}")
    runs_dir = Path(args.runs) if args.runs else (out / "runs" if args.fast else Path("runs/experiments"))
    for flag, folder in (("--out", out), ("--runs", runs_dir)):
        for parent in [folder, *folder.resolve().parents]:
            if parent.exists():
                if not parent.is_dir():
                    raise FileExistsError(f"{flag} {folder}: {parent} is a file, not a folder")
                break
    check_results_folder(out, args.name, runs_dir)
    t0 = time.perf_counter()
    info = dict(experiment=args.name, fast=args.fast,
                command="python -m minidit.experiments " + " ".join(shlex.quote(a) for a in argv),
                machine=f"{platform.machine()}, {platform.system()}, {os.cpu_count()} CPUs, "
                        f"Python {platform.python_version()}, NumPy {np.__version__}",
                matmul_gflops_start=matmul_rate(), revision=revision(), runs_folder=str(runs_dir), vae=VAE)

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
    return run_command(ap, lambda args: _run(args, argv), argv,
                       validate=lambda ap, a: (check_output_folder(ap, "--out", a.out),
                                               check_output_folder(ap, "--runs", a.runs)))


if __name__ == "__main__":
    sys.exit(main())
