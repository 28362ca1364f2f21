"""Training the evaluation classifier (minidit.evaluation.classifier) from scratch: AdamW with a
warm-up and cosine decay, random flips, cross-entropy; in a run directory with checkpoints,
resume, a JSONL log and a loss plot like every minidit training (minidit.training.rundir).

    python -m minidit.evaluate train-classifier --data shapes --out runs/classifier
    (writes runs/classifier/classifier.npz; the shipped one is data/classifier_shapes32.npz)
"""
import math
import time
from dataclasses import asdict

import numpy as np

from ..backend import Generator, resolve_device, synchronize, to_device, to_numpy
from ..layers.cross_entropy import cross_entropy_backward, cross_entropy_forward
from ..training.checkpoint import load_checkpoint
from ..training.data import DataLoader, ImageDataset, load_dataset
from ..training.optim import AdamW
from ..cli import TrainingDiverged
from ..training.rundir import check_resumable, restore_training_state, training_state
from .classifier import (ClassifierConfig, accuracy, classifier_backward, classifier_forward,
                         init_classifier, save_classifier)


def lr_at(step, steps, lr, warmup):
    """Linear warm-up over `warmup` steps, then cosine decay to 0 at `steps`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return 0.5 * lr * (1.0 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def train_classifier(dataset, steps=3000, batch_size=64, lr=2e-3, seed=0, device=None,
                     progress=True, config=None, test_dataset=None, weight_decay=0.05,
                     run_dir=None, ckpt_every=500, log_every=None):
    """Train a classifier from scratch on an ImageDataset; returns (params, meta).

    `config`: a ClassifierConfig or a dict of overrides; image size, channels and classes always
    follow the dataset. With `test_dataset` the held-out accuracy is measured and stored in meta.
    With `run_dir` (a minidit.training.rundir.RunDir) the loss is logged there (every
    `log_every` steps, default steps / 100) and a checkpoint written every `ckpt_every` steps; a run_dir asked to resume continues its newest checkpoint
    bit for bit. params are host float32 NumPy arrays; meta is JSON-able (see save_classifier).
    """
    device = resolve_device(device)
    over = asdict(config) if isinstance(config, ClassifierConfig) else dict(config or {})
    over.update(image_size=dataset.image_size, in_channels=dataset.channels,
                num_classes=dataset.num_classes)
    cfg = ClassifierConfig(**over)
    P = init_classifier(cfg, seed, device=device)
    opt = AdamW(P, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay)
    rng = Generator(seed, device)
    loader = DataLoader(dataset, batch_size, rng, flip=True, device=device)
    every = log_every or max(1, steps // 100)  # by default the loss curve keeps about 100 points
    curve, window, t0, start = [], [], time.perf_counter(), 0
    if run_dir is not None and run_dir.resume_from is not None:
        meta, groups = load_checkpoint(run_dir.resume_from)
        if meta.get("dataset", dataset.name) != dataset.name:
            raise ValueError(f"--resume: the classifier was trained on {meta.get('dataset')}, not {dataset.name}; "
                             f"continuing it on other data would be another run: start one with another --out")
        if meta.get("config") != asdict(cfg) or meta.get("steps") != steps:
            raise ValueError(f"--resume: the checkpoint was trained with config {meta.get('config')} "
                             f"for {meta.get('steps')} steps, the arguments ask for {asdict(cfg)} and {steps}")
        for k in P:
            P[k][...] = to_device(groups["model"][k], device)
        restore_training_state(meta, groups, opt, rng, loader)
        check_resumable(meta, groups, run_dir.resume_from)
        start, curve = meta["step"], meta["loss_curve"]
    if run_dir is not None:
        run_dir.start(start)

    def describe():
        return {"config": asdict(cfg), "dataset": dataset.name, "image_size": cfg.image_size,
                "channels": cfg.in_channels, "class_names": list(dataset.class_names),
                "n_train": len(dataset), "steps": steps, "batch_size": batch_size, "lr": lr,
                "weight_decay": weight_decay, "seed": seed, "device": device, "loss_curve": curve}

    step = start
    try:
        for step in range(start, steps):
            x, y = next(loader)
            logits, cache = classifier_forward(P, x, cfg)
            loss, c_ce = cross_entropy_forward(logits, y)
            _, grads = classifier_backward(cross_entropy_backward(1.0, c_ce), cache)
            opt.lr = lr_at(step, steps, lr, warmup=max(1, steps // 20))
            opt.step(P, grads)
            window.append(float(loss))
            if not math.isfinite(window[-1]):
                where = run_dir.last_checkpoint if run_dir is not None else None
                raise TrainingDiverged(f"the classifier's loss became {window[-1]} at step {step + 1}; "
                                       f"the newest checkpoint is {where or 'none (none written)'}")
            if (step + 1) % every == 0 or step + 1 == steps:
                curve.append([step + 1, round(sum(window) / len(window), 5)])
                window = []
                if run_dir is not None:
                    run_dir.log({"step": step + 1, "loss": curve[-1][1], "lr": opt.lr})
            if run_dir is not None and ((step + 1) % ckpt_every == 0 or step + 1 == steps):
                state, groups = training_state(opt, rng, loader)
                run_dir.save(step + 1, {**describe(), "kind": "classifier", **state}, model=P, **groups)
                run_dir.plot_loss("evaluation classifier: cross-entropy", keys=("loss",), final=step + 1 == steps)
            if progress and ((step + 1) % max(1, steps // 10) == 0 or step + 1 == steps):
                print(f"step {step + 1}/{steps}  loss {curve[-1][1]:.4f}  "
                      f"({time.perf_counter() - t0:.1f} s)", flush=True)
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: say where the run stopped
        if run_dir is None:
            raise
        raise run_dir.interrupted(e, step) from None
    synchronize(device)
    params = to_numpy(P)
    meta = {**describe(), "train_seconds": round(time.perf_counter() - t0, 1),
            "heldout_accuracy": None, "heldout_n": 0, "command": None}
    if test_dataset is not None:
        meta["heldout_accuracy"] = accuracy(params, meta, test_dataset)
        meta["heldout_n"] = len(test_dataset)
    return params, meta


def datasets_for_training(data, image_size, n_train, seed):
    """(train, held-out) ImageDatasets: the test split, or every 10th image of a folder."""
    if data in ("shapes", "mnist"):
        return (load_dataset(data, "train", image_size, seed=seed, n=n_train),
                load_dataset(data, "test", image_size, seed=seed))
    ds = load_dataset(data, "train", image_size, n=n_train)
    order = np.random.default_rng(seed).permutation(len(ds))
    held = np.zeros(len(ds), bool)
    held[order[::10]] = True
    return tuple(ImageDataset(ds.images[m], ds.labels[m], ds.class_names, ds.name) for m in (~held, held))


def run(args, run_dir, command, log=print):
    """The train-classifier command: train in `run_dir`, write run_dir/classifier.npz."""
    t0 = time.perf_counter()
    train, held = datasets_for_training(args.data, args.image_size, args.n_train, args.seed)
    config = dict(hidden_size=args.hidden_size, depth=args.depth, num_heads=args.num_heads)
    params, meta = train_classifier(train, args.steps, args.batch_size, args.lr, args.seed, args.device,
                                    not args.quiet, config, held, run_dir=run_dir, ckpt_every=args.ckpt_every,
                                    log_every=args.log_every)
    meta["command"] = command
    meta["wall_seconds"] = round(time.perf_counter() - t0, 1)
    try:
        out = save_classifier(run_dir.path / "classifier.npz", params, meta)
    except OSError as e:
        raise run_dir.write_failed(e, run_dir.path / "classifier.npz") from e
    log(f"held-out accuracy {100 * meta['heldout_accuracy']:.2f}% (n={meta['heldout_n']}), trained in "
        f"{meta['train_seconds']} s; wrote {out} ({out.stat().st_size / 1024:.0f} KiB)")
    return out
