"""Scoring generated samples (the paper's section 4 evaluation, scaled down to minidit's data).

The paper reports FID on Inception-V3 features of 50K samples. minidit has neither ImageNet nor
Inception, so it judges samples with its own small classifier (classifier.py): the class
accuracy of samples (does a sample of class k look like class k?) and a Fréchet distance on the
classifier's pooled features. That distance is NOT FID: its numbers are only comparable with
other runs scored by the same classifier file on the same number of images, so every report
carries the feature extractor's name and both image counts.

    python -m minidit.evaluate train-classifier --data shapes --out runs/classifier
    python -m minidit.evaluate samples --samples samples.npz [--classifier runs/classifier/classifier.npz]
"""
import argparse
import json
import shlex
import sys
import zipfile
from pathlib import Path

import numpy as np

from ..backend import get_device, resolve_device, to_device, to_numpy
from ..cli import CommandParser, check_output_folder, check_positive, check_range, run_command
from ..training.checkpoint import shipped_file
from ..training.data import load_dataset
from ..training.rundir import RunDir, add_run_arguments
from .classifier import ClassifierConfig, features, images_to_input, load_classifier
from .train_classifier import run as run_train_classifier

FD_NAME = "FD_minidit_classifier"  # never "FID": the features are not Inception-V3's
# the shipped classifier (data/ of a checkout, or the installed package's copy)
DEFAULT_CLASSIFIER = str(shipped_file("classifier_shapes32.npz", must_exist=False))


def _sqrtm_psd(S):
    """Square root of a symmetric positive semi-definite matrix, S = V diag(w) V^T -> V diag(sqrt w) V^T.

    Rounding can leave eigenvalues of about -1e-12 on a PSD matrix; they are clipped to 0.
    """
    w, V = np.linalg.eigh(S)
    return (V * np.sqrt(np.clip(w, 0.0, None))) @ V.T


def frechet_distance_from_stats(mu_a, sigma_a, mu_b, sigma_b):
    """Fréchet (2-Wasserstein) distance between N(mu_a, sigma_a) and N(mu_b, sigma_b), squared.

    d^2 = |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^1/2 S_b S_a^1/2)^1/2).
    The last trace equals tr((S_a S_b)^1/2) of the usual FID formula, but S_a^1/2 S_b S_a^1/2 is
    symmetric PSD, so symmetric eigendecompositions (eigh) compute it without complex numbers
    or scipy. Inputs mu (D,), sigma (D, D); returns a Python float.
    """
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    sigma_a, sigma_b = np.asarray(sigma_a, np.float64), np.asarray(sigma_b, np.float64)
    if mu_a.shape != mu_b.shape or sigma_a.shape != sigma_b.shape:
        raise ValueError(f"Fréchet distance: statistics differ in shape, {mu_a.shape} vs {mu_b.shape}")
    root_a = _sqrtm_psd(sigma_a)
    M = root_a @ sigma_b @ root_a
    M = 0.5 * (M + M.T)  # symmetric in exact arithmetic; remove the rounding asymmetry
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(M), 0.0, None)).sum()
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2.0 * tr_covmean)


def feature_stats(feats):
    """feats (N, D) -> mean (D,), covariance (D, D) with the N - 1 denominator (as pytorch-fid)."""
    f = np.asarray(to_numpy(feats), dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"feature statistics need (N >= 2, D) features, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(feat_a, feat_b):
    """Fréchet distance between Gaussians fitted to two feature sets (N_a, D) and (N_b, D).

    NumPy or CuPy inputs; computed on the host in float64. Like FID it is biased upward for
    small N, so only compare values computed on the same numbers of images.
    """
    return frechet_distance_from_stats(*feature_stats(feat_a), *feature_stats(feat_b))


def samples_to_input(samples):
    """Samples as the sampler writes them -> (N, C, H, W) float32 in [-1, 1], same backend.

    uint8 arrays are read as ADM's (N, H, W, C) layout; float arrays must already be
    (N, C, H, W) in [-1, 1], the model's own output layout.
    """
    if samples.ndim != 4:
        raise ValueError(f"samples must be 4-D images, got shape {tuple(samples.shape)}")
    if samples.dtype == np.uint8:
        return images_to_input(samples)
    if samples.dtype.kind != "f":
        raise ValueError(f"samples must be uint8 (N, H, W, C) or float (N, C, H, W), got {samples.dtype}")
    return samples.astype(np.float32, copy=False)


class EvalReport(dict):
    """The numbers of evaluate_samples, as a dict, with a one-line summary()."""

    def summary(self):
        return (f"class accuracy {100 * self['class_accuracy']:.1f}% (n={self['n_samples']}) | "
                f"classifier on real {100 * self['classifier_real_accuracy']:.1f}% "
                f"(n={self['n_real']}) | Fréchet distance on minidit-classifier features "
                f"{self[FD_NAME]:.2f} ({self['n_samples']} vs {self['n_real']} images; "
                f"not Inception FID)")

    __str__ = summary


def _real_dataset_for(meta):
    """The held-out split of the dataset the classifier was trained on (shapes or mnist)."""
    if meta["dataset"] not in ("shapes", "mnist"):
        raise ValueError(f"the classifier was trained on {meta['dataset']!r}, which has no "
                         "built-in held-out split: pass the real images explicitly")
    return load_dataset(meta["dataset"], split="test", image_size=meta["image_size"],
                        channels=meta["channels"])


def evaluate_samples(samples, labels, real_dataset=None, classifier=DEFAULT_CLASSIFIER,
                     device=None, batch_size=256, keep_features=False):
    """Score class-conditional samples against real images with the minidit classifier.

    samples: uint8 (N, H, W, C) or float (N, C, H, W) in [-1, 1], NumPy or CuPy; labels (N,) the
    classes the samples were asked for; device: where the classifier runs (None: the current
    default device, minidit.backend.get_device); real_dataset: an ImageDataset of real held-out images
    (default: the held-out split of the classifier's dataset); classifier: (params, meta) or the
    path of a saved classifier. Returns an EvalReport (a dict; .summary() is one line) with
    class_accuracy, per_class_accuracy, taken_for (for each asked class, how many of its samples
    the classifier gave each class: the non-zero cells of the confusion matrix),
    classifier_real_accuracy, FD_minidit_classifier, n_samples, n_real and the classifier file's
    description. keep_features=True adds the NumPy arrays behind them (sample_features (N, D),
    real_features (M, D), predictions (N,)), which a bootstrap over the samples needs
    (minidit.evaluation.experiments).
    """
    params, meta = load_classifier(classifier) if isinstance(classifier, (str, Path)) else classifier
    device = get_device() if device is None else resolve_device(device)
    params = to_device(params, device)  # once, not per batch
    real = _real_dataset_for(meta) if real_dataset is None else real_dataset
    cfg = ClassifierConfig(**meta["config"])
    if real.num_classes != cfg.num_classes or real.image_size != cfg.image_size \
            or real.channels != cfg.in_channels:
        raise ValueError(f"real images ({real.num_classes} classes, {real.image_size}px, "
                         f"{real.channels} channels) do not fit the classifier ({cfg.num_classes}, "
                         f"{cfg.image_size}px, {cfg.in_channels})")
    x = samples_to_input(to_device(samples, device))
    y = np.asarray(to_numpy(labels)).astype(np.int64).reshape(-1)
    if len(y) != len(x):
        raise ValueError(f"{len(x)} samples but {len(y)} labels")
    if len(y) and (y.min() < 0 or y.max() >= cfg.num_classes):
        raise ValueError(f"labels must lie in [0, {cfg.num_classes}), got {y.min()}..{y.max()}")
    # one pass per image set: pooled features, then the head's logits from them
    f_fake = to_numpy(features(params, meta, x, batch_size))                          # (N, D)
    f_real = to_numpy(features(params, meta, images_to_input(to_device(real.images, device)),
                               batch_size))                                             # (M, D)
    head_w, head_b = to_numpy(params["head.w"]), to_numpy(params["head.b"])
    pred = (f_fake @ head_w + head_b).argmax(axis=1)
    pred_real = (f_real @ head_w + head_b).argmax(axis=1)
    names = meta["class_names"]
    per_class = {names[k]: float((pred[y == k] == k).mean()) for k in np.unique(y)}
    # what the samples of each asked class were taken for (the confusion matrix's non-zero cells)
    taken_for = {names[k]: {names[j]: int(c) for j, c in enumerate(np.bincount(pred[y == k], minlength=len(names)))
                            if c} for k in np.unique(y)}
    report = EvalReport(
        class_accuracy=float((pred == y).mean()), n_samples=int(len(y)), per_class_accuracy=per_class,
        taken_for=taken_for,
        classifier_real_accuracy=float((pred_real == real.labels).mean()), n_real=int(len(real)),
        **{FD_NAME: frechet_distance(f_fake, f_real)},
        feature_extractor=f"minidit ViT classifier, pooled features (D={cfg.hidden_size}), "
                          f"trained on {meta['dataset']} ({meta.get('command') or 'train_classifier'})")
    if keep_features:
        report.update(sample_features=f_fake, real_features=f_real, predictions=pred)
    return report




def _positive(s):
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s}")
    return v


def _build_parser():
    p = CommandParser(prog="python -m minidit.evaluate",
                description="Train the evaluation classifier, or score a sample file with it.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train-classifier", help="train the evaluation classifier in a run directory")
    t.add_argument("--data", default="shapes", help="shapes, mnist, or an image folder")
    add_run_arguments(t, out=None, required=True, log_every=None)  # the classifier: OUT/classifier.npz
    t.add_argument("--image-size", type=_positive, default=32)
    t.add_argument("--n-train", type=_positive, default=None,
                   help="training images (default: the dataset's own, shapes 10000)")
    t.add_argument("--steps", type=_positive, default=3000)
    t.add_argument("--batch-size", type=_positive, default=64)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--hidden-size", type=_positive, default=ClassifierConfig.hidden_size)
    t.add_argument("--depth", type=_positive, default=ClassifierConfig.depth)
    t.add_argument("--num-heads", type=_positive, default=ClassifierConfig.num_heads)
    t.add_argument("--device", default="cpu", help="cpu, gpu or auto")
    t.add_argument("--quiet", action="store_true")
    s = sub.add_parser("samples", help="score an ADM-format .npz (arr_0 uint8 NHWC, arr_1 labels)")
    s.add_argument("--samples", required=True)
    s.add_argument("--classifier", default=DEFAULT_CLASSIFIER)
    s.add_argument("--real", default=None, help="real images: shapes, mnist or a folder "
                   "(default: the held-out split of the classifier's dataset)")
    s.add_argument("--device", default="cpu", help="cpu, gpu or auto")
    s.add_argument("--json", action="store_true", help="print the full report as JSON too")
    return p


def _load_sample_file(path):
    """ADM .npz -> (images (N, H, W, C) uint8, labels (N,) int64); clear errors for anything else."""
    try:
        f = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, EOFError, ValueError) as e:
        raise ValueError(f"{path} is not a readable .npz file ({type(e).__name__}: {e})") from None
    if not hasattr(f, "files"):
        raise ValueError(f"{path} holds a single array; expected an ADM-format .npz with arr_0 (images) "
                         "and arr_1 (labels), as python -m minidit.sample --npz writes")
    with f:
        if "arr_0" not in f.files or "arr_1" not in f.files:
            raise ValueError(f"{path} needs arr_0 (uint8 images N,H,W,C) and arr_1 (labels), "
                             f"found {f.files}")
        try:
            images, labels = f["arr_0"], f["arr_1"]
        except (zipfile.BadZipFile, EOFError, ValueError, OSError) as e:
            raise ValueError(f"{path} is damaged ({type(e).__name__}: {e})") from None
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"{path}: arr_0 must be uint8 (N, H, W, C), got {images.dtype} {images.shape}")
    if labels.dtype.kind not in "iu" or labels.shape != (len(images),):
        raise ValueError(f"{path}: arr_1 must be {len(images)} integer class ids, got {labels.dtype} {labels.shape}")
    return images, labels


def _validate(ap, args):
    if args.command == "train-classifier":
        check_positive(ap, args, ("lr", "ckpt_every", "keep") + (("log_every",) if args.log_every is not None else ()))
        check_range(ap, args, "seed", 0)
        check_output_folder(ap, "--out", args.out)


def _run(args, argv):
    device = resolve_device(args.device)
    if args.command == "train-classifier":
        run_dir = RunDir(args.out, args.resume, args.overwrite, args.keep, outputs=("classifier.npz",),
                         log=(lambda *a: None) if args.quiet else print)
        args.device = device
        try:
            run_train_classifier(args, run_dir, "python -m minidit.evaluate " + shlex.join(argv))
        finally:
            run_dir.close()
        return
    images, labels = _load_sample_file(args.samples)
    params, meta = load_classifier(args.classifier)
    real = None
    if args.real is not None:
        split = "test" if args.real in ("shapes", "mnist") else "train"
        real = load_dataset(args.real, split, meta["image_size"], meta["channels"])
    report = evaluate_samples(images, labels, real, (params, meta), device)
    print(report.summary())
    if args.json:
        print(json.dumps(report, indent=1))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_command(_build_parser(), lambda args: _run(args, argv), argv, validate=_validate,
                       out_of_memory="score fewer samples at a time, or lower --batch-size when training")


if __name__ == "__main__":
    sys.exit(main())
