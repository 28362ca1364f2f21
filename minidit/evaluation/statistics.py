"""Error bars and the verdict rule of the section 5 experiments (minidit.evaluation.experiments).

A sample metric moves with the samples drawn and with the training seed. `bootstrap` measures
the first on one evaluation (resampling its samples), `combine` both for a configuration (a
two-level bootstrap over its seeds, then its samples), and `better` calls "A beats B" a finding
only when A's whole 95% interval lies on the better side of B's.
"""
import json

import numpy as np
from threadpoolctl import threadpool_limits

from .evaluate import FD_NAME, feature_stats, frechet_distance_from_stats

METRICS = {"class_accuracy": "higher", FD_NAME: "lower"}


CHANCE = 0.1


MODES = ("unguided", "final_unguided", "final_guided")


# exercise: 5 Experiments
def bootstrap(correct, f_fake, f_real, n_boot, seed=0):
    """Deviations of class accuracy and Fréchet distance over `n_boot` resamplings (with
    replacement) of the generated samples, the real set held fixed. Returned centred (replicate
    minus the replicates' mean): a resample repeats samples, which biases the Fréchet distance
    upward, so the spread is used and not the replicates' level.

    correct (n,) bool, f_fake (n, F), f_real (M, F) -> {"class_accuracy": (n_boot,),
    FD_NAME: (n_boot,)} float64 arrays. The draws are exactly these, so that a run is reproducible:
    rng = np.random.default_rng(seed), then for each replicate b in order one
    i = rng.integers(0, n, n) (sample indices, with replacement); replicate b's accuracy is the mean
    of correct[i], its distance frechet_distance_from_stats(*feature_stats(f_fake[i]), *feature_stats(f_real)).
    """
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


# exercise: 5 Experiments
def interval(estimate, deviations):
    """95% normal interval from bootstrap deviations: estimate -/+ z sd.

    -> [low, high], a list of two Python floats, with z = 1.959964 and sd the population standard
    deviation of the deviations (np.std, ddof 0)."""
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
        # training compute as flops.training_compute counts it: Gflops x batch x steps x 3
        rec = {"step": e0["step"], "train_compute_gflops": model["gflops"] * budget["batch"] * e0["step"] * 3,
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


def fmt_interval(v, metric):
    if metric == "class_accuracy":
        return f"{100 * v['mean']:.1f}% [{100 * v['ci'][0]:.1f}, {100 * v['ci'][1]:.1f}]"
    return f"{v['mean']:.2f} [{v['ci'][0]:.2f}, {v['ci'][1]:.2f}]"


def mode_name(mode):
    return {"final_unguided": "unguided", "final_guided": "guided", "unguided": "unguided"}[mode]


def correlation(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return float(np.corrcoef(x, y)[0, 1])
