"""Parameter counts equal the official ones exactly (docs/paper.md §2.3); Gflops are within 0.03 of the
paper's Table 4 for the twelve models and the four block designs of DiT-XL/2."""
import pytest

from minidit import flops
from minidit.model import DiT_models, init_params

OFFICIAL = {  # (all, trainable) from docs/paper.md §2.3
    "DiT-S/8": (33_148_160, 33_142_016), "DiT-S/4": (32_945_024, 32_920_448),
    "DiT-S/2": (32_963_360, 32_865_056), "DiT-B/8": (130_881_536, 130_869_248),
    "DiT-B/4": (130_475_648, 130_426_496), "DiT-B/2": (130_512_416, 130_315_808),
    "DiT-L/8": (458_594_816, 458_578_432), "DiT-L/4": (458_053_760, 457_988_224),
    "DiT-L/2": (458_102_816, 457_840_672), "DiT-XL/8": (675_683_072, 675_664_640),
    "DiT-XL/4": (675_074_432, 675_000_704), "DiT-XL/2": (675_129_632, 674_834_720),
}


@pytest.mark.parametrize("name", OFFICIAL)
def test_param_counts_exact(name):
    n = flops.count_params(DiT_models[name]())
    assert (n["all"], n["trainable"]) == OFFICIAL[name]


def test_param_count_at_512px():
    n = flops.count_params(DiT_models["DiT-XL/2"](input_size=64))
    assert (n["all"], n["trainable"]) == (676_014_368, 674_834_720)
    assert abs(flops.gflops(DiT_models["DiT-XL/2"](input_size=64)) - 524.60) < 0.07


@pytest.mark.parametrize("name", flops.PAPER_TABLE)
def test_gflops_match_paper(name):
    assert abs(flops.gflops(DiT_models[name]()) - flops.PAPER_TABLE[name][1]) <= 0.03


@pytest.mark.parametrize("design", flops.PAPER_BLOCK_DESIGNS)
def test_block_designs_match_paper(design):
    cfg = DiT_models["DiT-XL/2"](block=design)
    params_m, gf, _ = flops.PAPER_BLOCK_DESIGNS[design]
    assert round(flops.count_params(cfg)["trainable"] / 1e6) == params_m
    assert abs(flops.gflops(cfg) - gf) <= 0.03


def test_analytic_count_equals_initialised_params():
    for design in flops.PAPER_BLOCK_DESIGNS:
        cfg = DiT_models["DiT-S/8"](block=design, depth=2)
        P = init_params(cfg)
        assert sum(v.size for v in P.values()) == flops.count_params(cfg)["trainable"]


def test_compute_estimates():
    cfg = DiT_models["DiT-XL/2"]()
    assert flops.training_compute(cfg, 256, 400_000) == pytest.approx(flops.gflops(cfg) * 256 * 400_000 * 3)
    # docs/paper.md §0: L/2 with 1000 steps is about 80.7 TFLOPs per image; XL/2 with 128 steps about 15.2
    assert flops.sampling_compute(DiT_models["DiT-L/2"](), 1000) / 1e3 == pytest.approx(80.7, abs=0.05)
    assert flops.sampling_compute(cfg, 128) / 1e3 == pytest.approx(15.18, abs=0.05)
    assert flops.sampling_compute(cfg, 10, guidance=True) == 2 * flops.sampling_compute(cfg, 10)


def test_cli_prints_table(capsys):
    assert flops.main([]) == 0
    out = capsys.readouterr().out
    assert "DiT-XL/2 cross-attention" in out and "118.64" in out
    assert flops.main(["--model", "DiT-S/2", "--input-size", "64"]) == 0
    with pytest.raises(SystemExit):
        flops.main(["--model", "nope"])
