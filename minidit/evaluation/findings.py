"""The verdicts of the section 5 experiments: each of the paper's claims (docs/paper.md §0)
put to the results of minidit.evaluation.experiments and marked "finding" (the intervals
separate) or "not a finding".
"""
import numpy as np

from ..flops import PAPER_BLOCK_DESIGNS
from .evaluate import FD_NAME
from .statistics import METRICS, better, correlation, final_replicates, fmt_interval, mode_name

# The paper's best and worst design by Table 4's FID (adaLN-Zero and in-context), read off its numbers
PAPER_FID = {d: v[2] for d, v in PAPER_BLOCK_DESIGNS.items()}
PAPER_BEST, PAPER_WORST = min(PAPER_FID, key=PAPER_FID.get), max(PAPER_FID, key=PAPER_FID.get)


def _count(runs):
    return {2: "two", 3: "three", 4: "four"}.get(len(runs), str(len(runs)))


def block_design_findings(runs):
    """The paper's best design (adaLN-Zero) best on each metric, and the Fréchet distance ratio of
    its worst (in-context) to its best."""
    out = []
    best, worst = PAPER_BEST, PAPER_WORST
    if best not in runs:
        return out
    for mode in ("final_unguided", "final_guided"):
        for metric in METRICS:
            fin = {d: r["summary"][-1][mode][metric] for d, r in runs.items()}
            order = sorted(fin, key=lambda d: fin[d]["mean"], reverse=METRICS[metric] == "higher")
            verdicts = {d: better(fin[best], fin[d], metric) for d in fin if d != best}
            out.append({"claim": f"{best} has the best {mode_name(mode)} {metric} of the {_count(runs)} designs",
                        "verdict": "finding" if all(v == "finding" for v in verdicts.values()) else "not a finding",
                        "ranking": order, "values": {d: fmt_interval(fin[d], metric) for d in order},
                        "against": verdicts})
    # the training loss (mean of the last 50 steps; interval over the seeds only): the measure by which
    # the paper's figure 5 shows adaLN-Zero ahead from early on, although the paper ranks by FID
    loss = {d: r["summary"][-1]["loss"] for d, r in runs.items()}
    if all(loss.values()):
        order = sorted(loss, key=lambda d: loss[d]["mean"])
        verdicts = {d: better(loss[best], loss[d], "loss") for d in loss if d != best}
        out.append({"claim": f"{best} has the lowest training loss of the {_count(runs)} designs (seed spread only)",
                    "verdict": "finding" if all(v == "finding" for v in verdicts.values()) else "not a finding",
                    "ranking": order,
                    "values": {d: f"{loss[d]['mean']:.4f} [{loss[d]['ci'][0]:.4f}, {loss[d]['ci'][1]:.4f}]"
                               for d in order},
                    "against": verdicts})
    if worst in runs:
        zero, rz = final_replicates(runs[best], "final_unguided", FD_NAME, seed=1)
        _, ri = final_replicates(runs[worst], "final_unguided", FD_NAME, seed=2)
        ratio = ri / rz
        lo, hi = np.percentile(ratio, [2.5, 97.5])
        ic = runs[worst]["summary"][-1]["final_unguided"][FD_NAME]["mean"]
        out.append({"claim": f"{worst}'s Fréchet distance is about twice {best}'s (paper: {PAPER_FID[worst]} / "
                             f"{PAPER_FID[best]} = {PAPER_FID[worst] / PAPER_FID[best]:.2f})",
                    "ratio": ic / zero["mean"], "ci": [float(lo), float(hi)],
                    "verdict": "finding" if lo > 1 else "not a finding"})
    return out


def scaling_findings(runs):
    """Smaller patch and bigger model better (pairwise, from the intervals), quality against
    log Gflops (Pearson r with a two-level bootstrap interval), and compute-matched comparisons."""
    out = []
    fin = {n: r["summary"][-1] for n, r in runs.items()}
    # the sizes from smallest to biggest (by their models' parameters)
    sizes = sorted({r["size"] for r in runs.values()},
                   key=lambda z: min(r["params"] for r in runs.values() if r["size"] == z))
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
                    out.append({"claim": f"{what} on {mode_name(mode)} {metric}", "verdict": better(va, vb, metric),
                                "values": {a: fmt_interval(va, metric), b: fmt_interval(vb, metric)}})
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
                out.append({"claim": f"{mode_name(mode)} {metric} improves with log10 Gflops "
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
                                             f"{mode_name(mode)} {metric}",
                                    "verdict": better(va, vb, metric),
                                    "values": {a: fmt_interval(va, metric), b: fmt_interval(vb, metric)}})
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
                        "values": {b: fmt_interval(eb["unguided"][FD_NAME], FD_NAME),
                                   a: fmt_interval(ea["unguided"][FD_NAME], FD_NAME)}})
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
                        "values": {big: fmt_interval(va, FD_NAME), small: fmt_interval(vb, FD_NAME)}})
    return out
