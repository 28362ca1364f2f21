"""Sample evaluation: the classifier's float64 gradient check, the Fréchet distance against closed
forms, the shipped classifier's held-out accuracy, evaluate_samples on real images with true and
shuffled labels, a short training run that lowers the loss, and the command line's errors."""
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import gradcheck, randn
from minidit.backend import to_numpy
from minidit.evaluation.classifier import (ClassifierConfig, classifier_backward, classifier_forward,
                                           classifier_param_shapes, classify, features, images_to_input,
                                           init_classifier, load_classifier, save_classifier)
from minidit.evaluation.evaluate import (FD_NAME, evaluate_samples, frechet_distance,
                                         frechet_distance_from_stats, main)
from minidit.evaluation.train_classifier import train_classifier
from minidit.training.checkpoint import load_checkpoint
from minidit.training.data import ImageDataset, load_dataset
from minidit.training.rundir import RunDir

SHIPPED = Path(__file__).resolve().parents[1] / "data" / "classifier_shapes32.npz"
TINY = ClassifierConfig(image_size=8, in_channels=3, num_classes=3, patch_size=4, hidden_size=8,
                        depth=2, num_heads=2, mlp_ratio=2.0)


pytestmark = pytest.mark.xdist_group("evaluate")  # its module-scoped fixtures are built once, on one worker

def _random_params(xp, rng, cfg):
    """Every parameter random (LayerNorm gammas around 1), so no gradient path is switched off."""
    return {k: randn(xp, rng, *s, scale=0.5) + (1.0 if k.rsplit(".", 2)[-2].startswith("norm")
                                                  and k.endswith(".w") else 0.0)
            for k, s in classifier_param_shapes(cfg).items()}


def test_classifier_gradcheck(xp, rng):
    P = _random_params(xp, rng, TINY)
    arrays = dict(x=randn(xp, rng, 2, 3, 8, 8), **P)

    def f(x, **params):
        return classifier_forward(params, x, TINY)

    def b(dout, cache):
        dx, g = classifier_backward(dout, cache)
        return dict(x=dx, **g)

    res = gradcheck("evaluation classifier (2 ViT blocks, pool, head)", f, b, arrays, tol=1e-6,
                    num_checks=8)
    assert len(res.rows) == len(arrays)  # the image and every parameter


def test_logits_are_head_of_features(xp, rng):
    meta = {"config": TINY.__dict__}
    P = _random_params(xp, rng, TINY)
    x = randn(xp, rng, 5, 3, 8, 8)
    f = to_numpy(features(P, meta, x, batch_size=2))  # (N, D), batched in 3 pieces
    logits = to_numpy(classify(P, meta, x, batch_size=4))
    want = f @ to_numpy(P["head.w"]) + to_numpy(P["head.b"])
    assert f.shape == (5, 8) and logits.shape == (5, 3)
    np.testing.assert_allclose(logits, want, rtol=1e-10, atol=1e-12)


def test_frechet_distance_closed_form_diagonal():
    # N(mu_a, diag(a)) vs N(mu_b, diag(b)): d^2 = |mu_a - mu_b|^2 + sum (sqrt(a) - sqrt(b))^2
    rng = np.random.default_rng(0)
    mu_a, mu_b = rng.standard_normal(6), rng.standard_normal(6)
    a, b = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    want = ((mu_a - mu_b) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    got = frechet_distance_from_stats(mu_a, np.diag(a), mu_b, np.diag(b))
    np.testing.assert_allclose(got, want, rtol=1e-10)
    # a rotation applied to both distributions changes nothing
    Q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    got_rot = frechet_distance_from_stats(Q @ mu_a, Q @ np.diag(a) @ Q.T, Q @ mu_b, Q @ np.diag(b) @ Q.T)
    np.testing.assert_allclose(got_rot, want, rtol=1e-8)


def test_frechet_distance_general_covariances_and_symmetry():
    rng = np.random.default_rng(1)
    A, B = rng.standard_normal((5, 5)), rng.standard_normal((5, 5))
    Sa, Sb = A @ A.T + 0.1 * np.eye(5), B @ B.T  # covariances that do not commute
    mu_a, mu_b = rng.standard_normal(5), rng.standard_normal(5)
    # independent reference: tr((Sa Sb)^1/2) = sum of sqrt of the (real, >= 0) eigenvalues of Sa Sb
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvals(Sa @ Sb).real, 0, None)).sum()
    want = ((mu_a - mu_b) ** 2).sum() + np.trace(Sa) + np.trace(Sb) - 2 * tr_covmean
    ab = frechet_distance_from_stats(mu_a, Sa, mu_b, Sb)
    np.testing.assert_allclose(ab, want, rtol=1e-8)
    np.testing.assert_allclose(frechet_distance_from_stats(mu_b, Sb, mu_a, Sa), ab, rtol=1e-8)
    # from features: a set against itself is 0, and against a shifted copy is |shift|^2
    fa = rng.standard_normal((400, 5)) @ A
    assert abs(frechet_distance(fa, fa)) < 1e-8
    np.testing.assert_allclose(frechet_distance(fa, fa + 2.0), 5 * 4.0, rtol=1e-8)
    np.testing.assert_allclose(frechet_distance(fa, fa[::-1] * 1.5), frechet_distance(fa[::-1] * 1.5, fa),
                               rtol=1e-8)


@pytest.fixture(scope="module")
def shipped():
    if not SHIPPED.exists():
        pytest.fail(f"{SHIPPED} is missing: python -m minidit.evaluate train-classifier --data "
                    "shapes --out runs/classifier, then copy runs/classifier/classifier.npz")
    return load_classifier(SHIPPED)


@pytest.fixture(scope="module")
def heldout():
    return load_dataset("shapes", split="test", n=500)


def test_shipped_classifier_is_small_and_accurate(shipped, heldout):
    params, meta = shipped
    assert SHIPPED.stat().st_size < 1_000_000
    assert meta["dataset"] == "shapes" and meta["image_size"] == 32 and meta["channels"] == 3
    assert meta["command"].startswith("python -m minidit.evaluate train-classifier")
    pred = classify(params, meta, images_to_input(heldout.images)).argmax(axis=1)
    acc = (pred == heldout.labels).mean()
    print(f"shipped classifier: {100 * acc:.1f}% on {len(heldout)} held-out shapes images")
    assert acc >= 0.95


def test_evaluate_samples_real_images(shipped, heldout):
    samples = load_dataset("shapes", split="train", n=200)  # other images than the held-out set
    real = ImageDataset(heldout.images[:300], heldout.labels[:300], heldout.class_names, "shapes")
    good = evaluate_samples(samples.images, samples.labels, real, shipped)
    shuffled_labels = np.random.default_rng(0).permutation(samples.labels)
    shuffled = evaluate_samples(samples.images, shuffled_labels, real, shipped)
    one_class = samples.labels == 0
    narrow = evaluate_samples(samples.images[one_class], samples.labels[one_class], real, shipped)
    print(good.summary(), shuffled.summary(), narrow.summary(), sep="\n")
    assert good["n_samples"] == 200 and good["n_real"] == 300
    # taken_for: each asked class's samples counted by what the classifier gave them, its own class
    # as often as per_class_accuracy says; shuffled labels spread over other classes
    names = heldout.class_names
    for report, labels in ((good, samples.labels), (shuffled, shuffled_labels)):
        assert sum(sum(row.values()) for row in report["taken_for"].values()) == 200
        for name, row in report["taken_for"].items():
            asked = int((labels == names.index(name)).sum())
            assert sum(row.values()) == asked and all(c > 0 for c in row.values())
            assert row.get(name, 0) == round(report["per_class_accuracy"][name] * asked)
    assert any(len(row) > 2 for row in shuffled["taken_for"].values())
    assert good["class_accuracy"] >= 0.93 and good["classifier_real_accuracy"] >= 0.95
    assert shuffled["class_accuracy"] <= 0.3
    assert good[FD_NAME] == pytest.approx(shuffled[FD_NAME])  # the FD ignores labels
    assert good[FD_NAME] < 0.2 * narrow[FD_NAME]  # real vs real is far closer than one class vs all
    assert "not Inception FID" in good.summary() and "(n=200)" in good.summary()
    # float NCHW samples in [-1, 1] give the same report as their uint8 NHWC bytes
    as_float = evaluate_samples(images_to_input(samples.images), samples.labels, real, shipped)
    assert as_float["class_accuracy"] == good["class_accuracy"]
    assert as_float[FD_NAME] == pytest.approx(good[FD_NAME], rel=1e-5)


def test_train_classifier_lowers_loss_and_round_trips(tmp_path):
    ds = load_dataset("shapes", split="train", image_size=16, n=256)
    params, meta = train_classifier(ds, steps=30, batch_size=32, lr=3e-3, seed=0, progress=False,
                                    config=dict(hidden_size=32, depth=1))
    losses = [l for _, l in meta["loss_curve"]]
    assert len(losses) == 30 and np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.2
    assert meta["config"]["image_size"] == 16 and meta["config"]["in_channels"] == 3
    save_classifier(tmp_path / "c.npz", params, meta)
    params2, meta2 = load_classifier(tmp_path / "c.npz")
    assert meta2 == {**meta, "kind": "classifier"} and set(params2) == set(params)
    x = images_to_input(ds.images[:4])
    np.testing.assert_array_equal(classify(params2, meta2, x), classify(params, meta, x))
    stored, groups = load_checkpoint(tmp_path / "c.npz")  # the same format as every minidit model
    assert stored["kind"] == "classifier" and set(groups) == {"model"}


def test_classifier_training_resumes_bit_for_bit_in_a_run_directory(tmp_path):
    ds = load_dataset("shapes", split="train", image_size=8, n=64)
    kw = dict(steps=6, batch_size=8, lr=3e-3, seed=0, progress=False, config=dict(hidden_size=8, depth=1,
              num_heads=2, patch_size=4))
    straight, _ = train_classifier(ds, run_dir=RunDir(tmp_path / "a"), ckpt_every=3, **kw)
    with pytest.raises(KeyboardInterrupt):  # killed after step 4: its checkpoint is step 3
        def stop_at_four(record):
            if record["step"] == 4:
                raise KeyboardInterrupt
        run_dir = RunDir(tmp_path / "b")
        run_dir.log = lambda rec, log=run_dir.log: (log(rec), stop_at_four(rec))
        train_classifier(ds, run_dir=run_dir, ckpt_every=3, **kw)
    resumed, meta = train_classifier(ds, run_dir=RunDir(tmp_path / "b", resume=True), ckpt_every=3, **kw)
    for k in straight:
        np.testing.assert_array_equal(resumed[k], straight[k])
    steps = [json.loads(line)["step"] for line in open(tmp_path / "b" / "log.jsonl")]
    assert steps == list(range(1, 7))  # step 4 was logged before the kill, and is there once
    assert (tmp_path / "b" / "loss.png").exists() and [r[0] for r in meta["loss_curve"]] == steps


def test_init_uses_dataset_channels():
    P = init_classifier(ClassifierConfig(in_channels=1))
    assert P["patch_embed.proj.w"].shape == (1 * 4 * 4, ClassifierConfig().hidden_size)


@pytest.mark.parametrize("argv, message", [
    ([], "required"),
    (["train-classifier"], "--out"),
    (["train-classifier", "--out", "x", "--steps", "0"], "positive"),
    (["train-classifier", "--out", "RUN", "--resume"], "holds no checkpoint"),
    (["train-classifier", "--out", "x", "--lr", "nan"], "--lr must be positive"),
    (["samples", "--samples", "/no/such/file.npz"], "No such file"),
    (["samples", "--samples", "NOLABELS"], "arr_1"),
    (["bogus"], "invalid choice"),
])
def test_cli_errors_exit_2_with_one_line(argv, message, capsys, tmp_path):
    argv = [str(tmp_path / "run") if a == "RUN" else a for a in argv]
    if "NOLABELS" in argv:
        np.savez(tmp_path / "s.npz", np.zeros((2, 32, 32, 3), np.uint8))
        argv = [str(tmp_path / "s.npz") if a == "NOLABELS" else a for a in argv]
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert message in err and err.count("\n") == 1, err


def test_cli_samples_prints_summary(shipped, heldout, capsys, tmp_path):
    np.savez(tmp_path / "s.npz", heldout.images[:50], heldout.labels[:50])
    main(["samples", "--samples", str(tmp_path / "s.npz"), "--classifier", str(SHIPPED)])
    out = capsys.readouterr().out
    assert out.startswith("class accuracy") and "(50 vs 1000 images; not Inception FID)" in out
