"""The section 5 experiments run end to end in their fast mode and write JSON and figures."""
import json
from pathlib import Path

import pytest

from minidit.evaluation import experiments
from minidit.evaluation.evaluate import DEFAULT_CLASSIFIER, FD_NAME

pytestmark = pytest.mark.skipif(not Path(DEFAULT_CLASSIFIER).exists(),
                                reason="the shipped classifier is missing")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(experiments.EXPERIMENTS))
def test_fast_mode_runs_and_writes_results(name, tmp_path, capsys):
    assert experiments.main([name, "--fast", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / f"{name}.json").read_text())
    assert res["fast"] and res["experiment"] == name and res["seconds"] > 0 and res["machine"]
    runs = res["runs"]
    assert len(runs) == {"block-designs": 4, "scaling": 6, "sampling-compute": 2}[name]
    for r in runs.values():
        recs = r.get("history") or r["curve"]
        for e in recs:
            assert 0.0 <= e["class_accuracy"] <= 1.0 and e[FD_NAME] >= 0.0 and e["n_samples"] == 10
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs and all((tmp_path / p).stat().st_size > 1000 for p in pngs)
