"""Figures and Markdown pages of the section 5 experiments' results (PNGs with labelled axes
and error bars, SUMMARY.md beside each JSON)."""
import numpy as np

from ..cli import atomic_write
from ..training.viz import figure
from .evaluate import FD_NAME
from .statistics import CHANCE, MODES, fmt_interval, mode_name

TITLE_SIZE = 9  # every panel title and figure title: one size, wrapped to fit above its panel


def _titles(fig, axes, suptitle):
    """One font size for every title, and a layout that keeps the figure title clear of the panels'."""
    for ax in axes:
        ax.title.set_fontsize(TITLE_SIZE)
    fig.suptitle(suptitle, fontsize=TITLE_SIZE)
    fig.tight_layout()


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
                title=f"Fréchet distance, unguided,\n{n} samples per point")
    axes[1].set(xlabel="training step", ylabel="class accuracy of samples (%)",
                title=f"class accuracy, unguided,\n{n} samples per point")
    axes[1].axhline(10, color="gray", lw=0.8, ls=":")
    axes[2].set(xlabel="training step", ylabel="training loss (mean of 50 steps)", title="training loss\n", yscale="log")
    axes[0].legend(fontsize=7)
    _titles(fig, axes, "mean over seeds; bands: 95% two-level bootstrap (seeds, then samples)")
    path = out / f"{name}_over_training.png"
    _save(fig, path)
    return path


def _final_bars(runs, name, out):
    fig = figure(figsize=(11, 3.6))
    axes = fig.subplots(1, 3)
    labels = list(runs)
    n = runs[labels[0]]["summary"][-1]["final_unguided"]["n_samples"]
    panels = [("final_unguided", FD_NAME, 1, f"FD, unguided, {n} samples\n(lower is better)"),
              ("final_unguided", "class_accuracy", 100, f"class accuracy %, unguided,\n{n} samples"),
              ("final_guided", "class_accuracy", 100, f"class accuracy %, guidance 4,\n{n} samples")]
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
    _titles(fig, axes, f"step {step}: bars = mean over seeds with 95% two-level bootstrap interval; dots = seeds")
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
            f = corr.get(f"{mode_name(mode)} {metric}")
            note = f" (r = {f['r']:.2f} [{f['ci'][0]:.2f}, {f['ci'][1]:.2f}])" if f else ""
            n = next(iter(runs.values()))["summary"][-1][mode]["n_samples"]
            ax.set(xscale="log", xlabel="Gflops per forward pass",
                   ylabel=(f"final {FD_NAME}, {n} samples" if metric == FD_NAME
                           else f"final class accuracy (%), {n} samples"),
                   title=f"quality against Gflops\n{note.strip()}")
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
               ylabel=f"{FD_NAME}, unguided, {n} samples", title="quality against training compute\n")
        ax.legend(fontsize=6)
        _titles(fig, axes, "final values: mean over seeds with 95% two-level interval; right: the curves of every step")
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
                    title="class accuracy\n(dotted: chance; dashed: twice chance)")
        axes[1].set(xlabel="training step", ylabel=f"{FD_NAME} (lower is better)", title="Fréchet distance\n")
        axes[2].plot([e["step"] for e in h], [e["loss"] for e in h], marker="o")
        axes[2].set(xlabel="training step", ylabel="training loss (mean of 50 steps)", title="training loss\n")
        axes[0].legend(fontsize=7)
        _titles(fig, axes, "budget study: Tiny/1 adaLN-Zero, seed 0; bands: 95% bootstrap over the samples")
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
                    title="quality against sampling compute\n(labels: sampling steps)")
        axes[1].set(xscale="log", xlabel="sampling compute per image (Gflops x steps)",
                    ylabel="class accuracy (%), unguided", title="class accuracy against sampling compute\n")
        axes[0].legend(fontsize=7)
        _titles(fig, axes, "bands: 95% bootstrap interval over the samples (one training seed)")
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
    recipe = result["recipe"]
    lines += [
             f"Recipe: latents of {result.get('vae', 'the shipped VAE')}, lr {recipe['lr']:g} (constant after "
             f"{recipe['warmup']} warm-up steps), "
             f"batch {b['batch']}, EMA {recipe['ema']}; {b['steps']} steps; "
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
        return fmt_interval(v, metric) if v else "-"

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
                                f"{cell({'mean': g['class_accuracy'], 'ci': g['class_accuracy_ci']}, 'class_accuracy')}"
                                " |"
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
