"""python -m minidit.doctor: versions, device, matmul rate, and a whole-model gradient check and
training step on the device it reports (the CuPy stand-in in CI for --device gpu)."""
import pytest

from minidit import backend, doctor


@pytest.mark.parametrize("device", ["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def test_doctor_checks_the_device(device, capsys):
    if device == "gpu" and not backend.gpu_available():
        pytest.skip("CuPy finds no GPU")
    assert doctor.main(["--device", device]) == 0
    out = capsys.readouterr().out
    assert f"device: {device}" in out and "GFLOP/s" in out and "gradient check" in out
    assert out.rstrip().endswith("all good")
