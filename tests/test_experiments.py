"""The section 5 experiments: their fast modes run end to end and write JSON and figures, an
experiment continues from the runs it already has, and the error bars and verdicts compute
what they say."""
import json
import os
from pathlib import Path

import numpy as np
import pytest

from minidit.evaluation import experiments
from minidit.evaluation.evaluate import DEFAULT_CLASSIFIER, FD_NAME, frechet_distance

pytestmark = pytest.mark.skipif(not Path(DEFAULT_CLASSIFIER).exists(),
                                reason="the shipped classifier is missing")

N_RUNS = {"budget": 1, "block-designs": 4, "scaling": 6, "sampling-compute": 3}


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    """One folder of training runs for the whole module: the experiments share runs, as they do
    in runs/experiments (block-designs' adaLN-Zero is scaling's Tiny/1)."""
    return tmp_path_factory.mktemp("experiment-runs")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(experiments.EXPERIMENTS))
def test_fast_mode_runs_and_writes_results(name, runs_dir, tmp_path, capsys):
    assert experiments.main([name, "--fast", "--out", str(tmp_path), "--runs", str(runs_dir)]) == 0
    res = json.loads((tmp_path / f"{name}.json").read_text())
    assert res["fast"] and res["experiment"] == name and res["seconds"] > 0 and res["machine"]
    assert res["complete"] and res["matmul_gflops_start"] > 0 and res["matmul_gflops_end"] > 0
    assert res["compute_seconds"] > 0
    assert res["recipe"] == experiments.RECIPE
    runs = res["runs"]
    assert len(runs) == N_RUNS[name]
    n_final = 10 * experiments.FAST["final_per_class"]
    for r in runs.values():
        if name == "sampling-compute":
            assert [e["sampling_steps"] for e in r["curve"]] == list(experiments.FAST["sampling_steps"])
            evals = r["curve"]
        elif name == "budget":
            evals = [e[m] for e in r["history"] for m in experiments.MODES if m in e]
        else:
            assert sorted(r["seeds"]) == ["0", "1"] and r["summary"][-1]["n_seeds"] == 2
            assert all(e["loss"] > 0 for s in r["seeds"].values() for e in s["history"])
            evals = [e[m] for s in r["seeds"].values() for e in s["history"] for m in experiments.MODES if m in e]
            # every step has the curve's evaluation; the last step adds the bigger final ones
            assert all(e["unguided"]["n_samples"] == 10 for s in r["seeds"].values() for e in s["history"])
            last = r["summary"][-1]
            assert last["step"] == experiments.FAST["steps"] and last["final_guided"]["n_samples"] == n_final
            assert last["final_unguided"]["n_samples"] == n_final
            for mode in ("unguided", "final_unguided", "final_guided"):
                for k in experiments.METRICS:
                    v = last[mode][k]
                    assert len(v["seeds"]) == 2 and v["ci"][0] <= v["ci"][1]
                    assert v["mean"] == pytest.approx(np.mean(v["seeds"]))
        for e in evals:
            assert 0.0 <= e["class_accuracy"] <= 1.0 and e[FD_NAME] >= 0.0 and e["n_samples"] in (10, n_final)
            assert 0.0 <= e["class_accuracy_ci"][0] <= e["class_accuracy_ci"][1] <= 1.0
            assert e[FD_NAME + "_ci"][0] <= e[FD_NAME] <= e[FD_NAME + "_ci"][1]
    if name != "budget":
        assert res["findings"] and all(f.get("verdict") in ("finding", "not a finding") or "rho" in f
                                       for f in res["findings"])
    summary = (tmp_path / "SUMMARY.md").read_text()
    assert f"# {name}" in summary and "complete" in summary and "|---|" in summary
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs and all((tmp_path / p).stat().st_size > 1000 for p in pngs)


@pytest.mark.slow
def test_an_experiment_continues_from_its_runs(runs_dir, tmp_path):
    """Run twice with the same run folder: the second trains and samples nothing and writes the
    same numbers; a partial result (complete: false) is written after every finished run."""
    lines, partial = [], []
    designs = ("adaLN", "adaLN-Zero")  # two of the four, to keep the test short (2 designs x 2 seeds)
    first = experiments.run_block_designs(True, log=lines.append, runs_dir=tmp_path / "runs", designs=designs,
                                          on_progress=lambda r: partial.append(json.loads(json.dumps(r))))
    assert sum(line.startswith("training ") for line in lines) == 4
    assert len(partial) == 4 and not any(p["complete"] for p in partial)
    assert [len(p["runs"]) for p in partial] == [1, 2, 2, 2]
    assert list(first["runs"]) == list(designs) and "of the two designs" in first["findings"][0]["claim"]
    with pytest.raises(ValueError, match="unknown block design"):
        experiments.run_block_designs(True, runs_dir=tmp_path / "runs", designs=("adaLN", "DiT"))
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("*.npz")}
    lines.clear()
    second = experiments.run_block_designs(True, log=lines.append, runs_dir=tmp_path / "runs", designs=designs)
    assert not any(line.startswith("training ") for line in lines)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("*.npz")} == mtimes
    assert json.dumps(first["runs"], sort_keys=True) == json.dumps(second["runs"], sort_keys=True)
    # a run cut short is resumed, not restarted: drop the last checkpoint of one run
    run = tmp_path / "runs" / experiments.run_name("Tiny", 1, "adaLN", 1)
    last = max(run.glob("checkpoints/*.npz"))
    os.remove(last)
    (run / "evals.json").unlink()
    lines.clear()
    third = experiments.run_block_designs(True, log=lines.append, runs_dir=tmp_path / "runs", designs=designs)
    assert [line.split(":")[0] for line in lines if line.startswith("training ")] == [f"training {run.name}"]
    assert "--resume" in next(line for line in lines if line.startswith("training "))
    # the resumed run gives the same numbers (only its timings differ)
    assert _numbers(third["runs"]) == _numbers(first["runs"])


def _numbers(runs):
    """A result's runs without their timings, as canonical JSON."""
    def drop(x):
        if isinstance(x, dict):
            return {k: drop(v) for k, v in x.items() if k not in ("seconds", "train_seconds")}
        return [drop(v) for v in x] if isinstance(x, list) else x
    return json.dumps(drop(runs), sort_keys=True)


@pytest.mark.slow
def test_a_rerun_keeps_the_record_of_the_run_that_computed(runs_dir, tmp_path):
    argv = ["budget", "--fast", "--out", str(tmp_path), "--runs", str(runs_dir)]
    assert experiments.main(argv) == 0
    first = json.loads((tmp_path / "budget.json").read_text())
    assert experiments.main(argv) == 0
    second = json.loads((tmp_path / "budget.json").read_text())
    assert len(second["invocations"]) == 2 and second["invocations"][0] == first["invocations"][0]
    assert second["invocations"][0]["seconds"] == first["seconds"]
    assert _numbers(second["runs"]) == _numbers(first["runs"])
    assert "Invocations that wrote this file" in (tmp_path / "SUMMARY.md").read_text()


def test_bootstrap_spread_matches_the_binomial_and_is_centred():
    rng = np.random.default_rng(0)
    n, p = 300, 0.4
    correct = rng.random(n) < p
    f_real = rng.standard_normal((400, 4))
    f_fake = rng.standard_normal((n, 4)) + 0.5
    dev = experiments.bootstrap(correct, f_fake, f_real, 400)
    assert abs(dev["class_accuracy"].mean()) < 1e-12 and abs(dev[FD_NAME].mean()) < 1e-12
    sd = np.sqrt(correct.mean() * (1 - correct.mean()) / n)
    assert dev["class_accuracy"].std() == pytest.approx(sd, rel=0.15)
    # the spread of the distance is that of independent redraws of the samples
    redraws = [frechet_distance(rng.standard_normal((n, 4)) + 0.5, f_real) for _ in range(100)]
    assert dev[FD_NAME].std() == pytest.approx(np.std(redraws), rel=0.5)
    lo, hi = experiments.interval(0.4, dev["class_accuracy"])
    assert hi - lo == pytest.approx(2 * 1.959964 * dev["class_accuracy"].std())


def test_two_level_interval_covers_the_seed_spread_and_the_sampling_noise():
    same, _ = experiments.combine([0.5, 0.5], None)
    assert same["ci"] == [0.5, 0.5] and same["mean"] == 0.5
    seeds, reps = experiments.combine([0.4, 0.6], None)
    assert seeds["mean"] == pytest.approx(0.5) and seeds["ci"][0] == pytest.approx(0.4)
    assert seeds["ci"][1] == pytest.approx(0.6) and len(reps) == 2000
    noise = np.random.default_rng(1).normal(0, 0.05, 200)
    both, _ = experiments.combine([0.4, 0.6], [noise - noise.mean()] * 2)
    assert both["ci"][0] < 0.4 and both["ci"][1] > 0.6


def _fake_runs(means, spread):
    """Result runs of the block-design shape whose final values are `means` (per design) with
    seed values mean -/+ spread and small sample deviations."""
    dev = list(np.random.default_rng(0).normal(0, 0.002, 100))
    runs = {}
    for design, m in means.items():
        seeds = {}
        for j, v in enumerate((m - spread, m + spread)):
            final = {k: {"class_accuracy": v, FD_NAME: 10 * (1 - v), "n_samples": 300,
                         "bootstrap": {"class_accuracy": dev, FD_NAME: dev}}
                     for k in ("final_unguided", "final_guided")}
            last = {"step": 2000, "loss": 0.1, "unguided": dict(final["final_unguided"]), **final}
            seeds[str(j)] = {"history": [last]}
        runs[design] = {"gflops": 0.05, "seeds": seeds}
        runs[design]["summary"] = experiments.summarise(runs[design], experiments.FULL)
    return runs


def test_block_design_verdicts_follow_the_intervals():
    clear = experiments.block_design_findings(
        _fake_runs({"in-context": 0.3, "cross-attention": 0.35, "adaLN": 0.4, "adaLN-Zero": 0.6}, 0.01))
    best = [f for f in clear if f["claim"].startswith("adaLN-Zero has the best")]
    assert len(best) == 4 and all(f["verdict"] == "finding" for f in best)
    assert all(f["ranking"][0] == experiments.PAPER_BEST for f in best)
    ratio = next(f for f in clear if "ratio" in f)
    assert ratio["ratio"] == pytest.approx(7 / 4) and ratio["verdict"] == "finding"
    # the same means with seeds that disagree by more than the gaps: no finding
    noisy = experiments.block_design_findings(
        _fake_runs({"in-context": 0.3, "cross-attention": 0.35, "adaLN": 0.55, "adaLN-Zero": 0.6}, 0.1))
    assert all(f["verdict"] == "not a finding" for f in noisy if f["claim"].startswith("adaLN-Zero has the best"))
    assert next(f for f in noisy if f["claim"].startswith("adaLN-Zero has the best"))["ranking"][0] == \
        experiments.PAPER_BEST


def test_a_finding_needs_separated_intervals():
    a = {"mean": 0.7, "ci": [0.65, 0.75]}
    b = {"mean": 0.5, "ci": [0.45, 0.55]}
    c = {"mean": 0.6, "ci": [0.5, 0.7]}
    assert experiments.better(a, b, "class_accuracy") == "finding"
    assert experiments.better(b, a, "class_accuracy") == "not a finding"
    assert experiments.better(a, c, "class_accuracy") == "not a finding"
    assert experiments.better(b, a, FD_NAME) == "finding"  # lower distance is better
    assert experiments.better(c, b, FD_NAME) == "not a finding"
