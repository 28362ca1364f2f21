"""Backend selection, host/device moves and the seeded generator shared by CPU and GPU."""
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import STANDIN
from minidit import backend
from minidit.backend import Generator, get_array_module, resolve_device, to_device, to_numpy


def test_cpu_is_default(monkeypatch):
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    assert resolve_device(None) == "cpu"
    assert backend.get_xp("cpu") is np


def test_env_var_and_unknown_device(monkeypatch):
    monkeypatch.setenv(backend.ENV_VAR, "tpu")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        resolve_device(None)
    monkeypatch.setenv(backend.ENV_VAR, "cpu")
    assert resolve_device(None) == "cpu"


def test_auto_picks_what_works():
    assert resolve_device("auto") == ("gpu" if backend.gpu_available() else "cpu")


@pytest.mark.skipif(backend.gpu_available() and not STANDIN, reason="a GPU is present")
def test_gpu_request_without_gpu_is_a_clear_error(monkeypatch):
    if STANDIN:  # the stand-in, told that the machine has no GPU
        import cupy
        monkeypatch.setattr(cupy.cuda.runtime, "device_count", 0)
    with pytest.raises(RuntimeError, match="gpu"):
        resolve_device("gpu")
    assert resolve_device("auto") == "cpu"


def test_generator_is_reproducible_and_restorable():
    g = Generator(7)
    a = g.normal((3, 4))
    state = g.get_state()
    b = g.integers(0, 10, (5,))
    g.set_state(state)
    np.testing.assert_array_equal(g.integers(0, 10, (5,)), b)
    np.testing.assert_array_equal(Generator(7).normal((3, 4)), a)
    assert a.dtype == np.float32


def test_same_draws_on_every_backend(xp):
    dev = "gpu" if xp is not np else "cpu"
    a = Generator(3, device=dev).normal((2, 3))
    assert get_array_module(a) is xp
    np.testing.assert_array_equal(to_numpy(a), Generator(3).normal((2, 3)))


def test_to_device_and_back_on_containers(xp):
    dev = "gpu" if xp is not np else "cpu"
    tree = {"a": np.ones(2), "b": [np.zeros(1), 3]}
    moved = to_device(tree, dev)
    assert get_array_module(moved["a"]) is xp
    back = to_numpy(moved)
    assert isinstance(back["a"], np.ndarray) and back["b"][1] == 3
    backend.synchronize(dev)


def test_cache_blocks_views_and_fallbacks():
    """cache_blocks hands out writable 1-D views that tile big contiguous arrays exactly; small,
    strided or mismatched inputs are handled as documented."""
    from minidit.backend import CACHE_BLOCK, cache_blocks
    a = np.arange(2 * CACHE_BLOCK + 5, dtype=np.float32).reshape(-1, 1)
    out = np.zeros_like(a)
    pieces = list(cache_blocks(a, out))
    assert [p[0].size for p in pieces] == [CACHE_BLOCK, CACHE_BLOCK, 5]
    for src, dst in pieces:
        dst[...] = src * 2
    np.testing.assert_array_equal(out, a * 2)  # writes land in the array
    small = np.ones((3, 4))
    assert [p[0] is small for p in cache_blocks(small, small)] == [True]
    strided = np.ones((CACHE_BLOCK, 4)).T
    (one,) = list(cache_blocks(strided, np.empty((4, CACHE_BLOCK))))
    assert one[0] is strided
    with pytest.raises(ValueError, match="differ in size"):
        list(cache_blocks(np.ones(3), np.ones(4)))


_ALLOCATE_AND_FREE = """
import resource, sys
import numpy as np
from minidit.backend import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
def step():  # a training step in miniature: big arrays made, used and freed
    a = np.ones(1 << 20, np.float32)
    b = np.ones(3 << 20, np.float32)
    return a.sum() + (b * 2).sum()
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not backend.glibc_malloc(), reason="keep_freed_memory acts on glibc's malloc only")
def test_keep_freed_memory_spares_page_faults():
    """With keep_freed_memory the arrays of a repeated step reuse the memory the last step freed:
    (next to) no new pages from the kernel, where the default malloc takes fresh ones each time.
    Glibc's own MALLOC_*_ variables, where a user set them, are left to rule."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    def faults(mode, **extra):
        out = subprocess.run([sys.executable, "-c", _ALLOCATE_AND_FREE, mode], env={**env, **extra},
                             capture_output=True, text=True, check=True).stdout.split()
        return out[0], int(out[1])
    applied, kept = faults("keep")
    _, default = faults("default")
    assert applied == "True"
    assert default >= 20 and kept * 10 <= default, (kept, default)
    assert faults("keep", MALLOC_TRIM_THRESHOLD_="131072")[0] == "False"
