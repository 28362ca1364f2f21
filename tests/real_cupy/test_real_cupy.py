"""minidit against the real CuPy wheel, on a machine without a GPU (issue 24).

Run by .ci/real_cupy.sh, once per pinned CuPy version, each in its own virtual environment
(installing CuPy into the test environment would switch the main suite from the stand-in to "no
GPU"); skipped anywhere else (MINIDIT_REAL_CUPY=1 and a real CuPy are both needed). What it checks:

- every public name of the stand-in (tests/standin/cupy) and every CuPy attribute chain that
  minidit/ and benchmarks/ reach (`cupy.`, `xp.`, `nccl.`) exists in this CuPy;
- every fused kernel of minidit/fused.py, in float32 and float64, is traced by CuPy's own fusion and
  its generated CUDA source compiles with NVRTC for sm_70, sm_80 and sm_90; float32 in gives float32
  out, and the float32 PTX has no float64 instruction;
- `backend.synchronize()`, `python -m minidit.doctor --device gpu` and `NCCLWorld()` on ranks 0 and
  1 run on this CuPy up to the device, where only the device (and MPI) are faked.

How kernels compile without a GPU: an ndarray subclass over `UnownedMemory` (a pointer never read)
passes CuPy's type checks, so `cupy.fuse` traces for real; its `__cupy_override_elementwise_kernel__`
catches the launch inside `ElementwiseKernel.__call__` before any device call; CuPy's code generator
(`cupy._core._kernel._get_elementwise_kernel_code`, `cupy._core.core.compile_with_cache` up to the
compiler call) gives the source, and NVRTC compiles it for an explicit -arch. These are CuPy
internals: .ci/real_cupy.sh pins the versions this runs against.
"""
import importlib.util
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

if os.environ.get("MINIDIT_REAL_CUPY") != "1":
    pytest.skip("real-CuPy checks: run .ci/real_cupy.sh", allow_module_level=True)
cupy = pytest.importorskip("cupy")
if getattr(cupy, "STANDIN", False):
    pytest.skip("the CuPy stand-in is on the path, not the real CuPy", allow_module_level=True)

from cupy.cuda import nccl  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from nccl_fakes import FakeComm, install_mpi  # noqa: E402

MAJOR = int(cupy.__version__.split(".")[0])
ARCHS = ("70", "80", "90")


def say(line):
    """A summary line for the CI log (.ci/real_cupy.sh prints the lines that start with 'real-cupy')."""
    print(f"real-cupy {cupy.__version__}: {line}")
    with open(os.environ.get("MINIDIT_REAL_CUPY_SUMMARY", os.devnull), "a") as f:
        f.write(f"real-cupy {cupy.__version__}: {line}\n")


def test_versions():
    import cupy_backends.cuda.libs.nvrtc as nvrtc
    say(f"CuPy {cupy.__version__}, NumPy {np.__version__}, NVRTC {'.'.join(map(str, nvrtc.getVersion()))}, "
        f"NCCL library {'found' if hasattr(nccl, 'get_unique_id') else 'MISSING'}")
    assert hasattr(nccl, "get_unique_id"), "nvidia-nccl-cu12 is not installed or not found by CuPy"


# --- names -------------------------------------------------------------------------------------

def _standin():
    spec = importlib.util.spec_from_file_location("minidit_cupy_standin", ROOT / "tests/standin/cupy/__init__.py")
    mod = importlib.util.module_from_spec(spec)
    saved = {k: sys.modules.get(k) for k in ("cupy.cuda", "cupy.cuda.nccl")}
    spec.loader.exec_module(mod)  # it registers <name>.cuda modules under its own name only
    for k, v in saved.items():
        assert sys.modules.get(k) is v
    return mod


def _public(obj):
    return {n for n in dir(obj) if not n.startswith("_")}


def test_every_standin_name_exists_in_real_cupy():
    s = _standin()
    pairs = [("", s, cupy), ("cuda.", s.cuda, cupy.cuda), ("cuda.runtime.", s.cuda.runtime, cupy.cuda.runtime),
             ("cuda.nccl.", s.cuda.nccl, nccl), ("cuda.Device.", s.cuda.Device, cupy.cuda.Device),
             ("cuda.Stream.", s.cuda.Stream, cupy.cuda.Stream.null), ("ndarray.", s.ndarray, cupy.ndarray),
             ("lib.stride_tricks.", s.lib.stride_tricks, cupy.lib.stride_tricks)]
    missing, checked = [], 0
    for prefix, mine, real in pairs:
        for name in sorted(_public(mine)):
            if (prefix + name in s.STANDIN_ONLY or (prefix == "" and name in ("cuda", "lib", "ndarray"))
                    or isinstance(getattr(mine, name), type(sys))):  # modules it imports
                continue
            checked += 1
            if not hasattr(real, name):
                missing.append(prefix + name)
    say(f"{checked} stand-in names checked; stand-in names missing from real CuPy: {', '.join(missing) or 'none'}")
    assert not missing


_CHAIN = re.compile(r"(?<![\w.])(?:self\.)?(cupy|xp|nccl)((?:\.[A-Za-z_]\w*|\(\))+)")


def _project_chains():
    chains = set()
    for path in sorted(list((ROOT / "minidit").rglob("*.py")) + list((ROOT / "benchmarks").glob("*.py"))):
        for line in path.read_text().splitlines():
            code = line.split("#", 1)[0]
            for root, rest in _CHAIN.findall(code):
                chains.add((root, rest.rstrip("()").rstrip(".")))
    return chains


def test_every_cupy_attribute_the_project_reaches_exists():
    roots = {"cupy": cupy, "xp": cupy, "nccl": nccl}
    missing, n = [], 0
    for root, rest in sorted(_project_chains()):
        obj, ok = roots[root], True
        for part in re.findall(r"\(\)|\w+", rest):
            if part == "()":
                if not isinstance(obj, type):
                    break  # what a function returns is not known here: the chain ends
                continue  # an instance of a class: its attributes are the class's
            if not hasattr(obj, part):
                ok = False
                break
            obj = getattr(obj, part)
        n += 1
        if not ok:
            missing.append(root + rest)
    # chains that the scan cannot see through a call with arguments
    for owner, name in ((cupy.cuda.Device, "use"), (cupy.cuda.Device, "synchronize"),
                        (cupy.cuda.Stream.null, "ptr"), (cupy.cuda.Stream, "synchronize"), (cupy.cuda.runtime, "deviceSynchronize")):
        n += 1
        if not hasattr(owner, name):
            missing.append(f"{getattr(owner, '__name__', type(owner).__name__)}.{name}")
    say(f"{n} CuPy attribute chains of minidit/ and benchmarks/ checked; missing: {', '.join(missing) or 'none'}")
    assert not missing


# --- fused kernels -------------------------------------------------------------------------------

class _Launch(Exception):
    """Raised where CuPy would launch the kernel: everything before it ran for real."""


class _Traced(cupy.ndarray):
    """A CuPy array over memory that is never touched, whose kernel launches are caught."""

    def __cupy_override_elementwise_kernel__(self, kernel, *args, **kwargs):
        raise _Launch(kernel, args, kwargs)


def _array(shape, dtype):
    from cupy.cuda import memory
    n = max(1, int(np.prod(shape)) * np.dtype(dtype).itemsize)
    mem = memory.UnownedMemory(0x100000, n, None, 0)  # device 0 given: no device query
    return _Traced(shape, dtype, memptr=memory.MemoryPointer(mem, 0))


def _kernel_source(kernel, args):
    """CUDA source and NVRTC options CuPy would compile for this launch, and the output dtypes."""
    from cupy._core import _carray, _kernel, _scalar
    from cupy.cuda import compiler
    ins = args[:kernel.nin]
    in_types, out_types, type_map = kernel._decide_params_type(
        tuple(a.dtype if isinstance(a, cupy.ndarray) else None for a in ins), ())
    shape = np.broadcast_shapes(*[a.shape for a in ins if isinstance(a, cupy.ndarray)])
    nd = len(shape)
    infos = []
    for a, t in zip(ins, in_types):
        if isinstance(a, cupy.ndarray):
            infos.append(_kernel._ArgInfo(1, cupy.ndarray, a.dtype, nd, a.shape == shape, True))
        else:  # a scalar: CuPy 14 records its dtype, 13 its type
            infos.append(_kernel._ArgInfo(3, _scalar.CScalar, np.dtype(t) if MAJOR >= 14 else np.dtype(t).type,
                                          0, True, True))
    infos += [_kernel._ArgInfo(1, cupy.ndarray, np.dtype(t), nd, True, True) for t in out_types]
    infos.append(_kernel._ArgInfo(2, _carray.Indexer, None, nd, True, True))
    code = _kernel._get_elementwise_kernel_code(tuple(infos), type_map, kernel.params, kernel.operation,
                                                kernel.name, kernel.preamble, **kernel.kwargs)
    grabbed = []

    def grab(source, options=(), *a, **k):
        grabbed.append((source, tuple(options)))
        raise _Launch()

    real = compiler._compile_module_with_cache
    compiler._compile_module_with_cache = grab
    try:
        cupy._core.core.compile_with_cache(code, tuple(kernel.kwargs.get("options", ())))
    except _Launch:
        pass
    finally:
        compiler._compile_module_with_cache = real
    return grabbed[0][0], grabbed[0][1], tuple(np.dtype(t) for t in out_types)


def _trace(fn, args):
    try:
        fn(*args)
    except _Launch as e:
        return e.args
    raise AssertionError("the fused function returned without launching a kernel")


def _fused_cases(dtype):
    """(name, fused function, arguments) of every kernel, as minidit calls it for this dtype."""
    from minidit import fused
    K = fused.kernels(cupy)
    a = lambda *s: _array(s, dtype)  # noqa: E731
    x, row = a(2, 5, 8), a(2, 5, 1)
    f = np.dtype(dtype).type
    return [("gelu", K["gelu"], (x,)), ("gelu_grad", K["gelu_grad"], (x, x)),
            ("softmax_grad", K["softmax_grad"], (x, x, row)), ("normalize", K["normalize"], (x, row, row)),
            ("affine", K["affine"], (x, a(8), a(8))), ("layernorm_grad", K["layernorm_grad"], (x, x, row, row, row)),
            ("modulate", K["modulate"], (x, a(2, 1, 8), a(2, 1, 8))), ("gated", K["gated"], (x, a(2, 1, 8), x)),
            # as fused.adamw_update / ema_update pass them: scalars typed as the weights
            ("adamw", K["adamw"], (x, x, x, x) + tuple(f(v) for v in (0.9999, 0.1, 0.999, 0.001, 1e-3, 0.03, 1e-8))),
            ("ema", K["ema"], (x, x, f(0.999), f(0.001)))]


def _split_ptx(ptx):
    """{kernel entry name: [instruction lines]} of a PTX module."""
    out, name = {}, None
    for line in ptx.splitlines():
        m = re.search(r"\.entry\s+(\w+)", line)
        if m:
            name = m.group(1)
            out[name] = []
            continue
        s = line.strip()
        if name and s and not s.startswith(("//", ".", "{", "}", "$", ")")):
            out[name].append(s)
    return out


def _nvrtc(source, options, arch):
    from cupy_backends.cuda.libs import nvrtc
    prog = nvrtc.createProgram(source, "minidit_fused.cu", (), ())
    try:
        try:
            nvrtc.compileProgram(prog, list(options) + [f"-arch=sm_{arch}", "--device-as-default-execution-space"])
        except Exception as e:
            raise AssertionError(f"NVRTC sm_{arch}: {e}\n{nvrtc.getProgramLog(prog)[-3000:]}") from None
        cubin, ptx = nvrtc.getCUBIN(prog), nvrtc.getPTX(prog)
    finally:
        nvrtc.destroyProgram(prog)
    return cubin, ptx.decode() if isinstance(ptx, bytes) else ptx


def test_every_fused_kernel_traces_and_compiles_for_sm70_sm80_sm90():
    kernels = []  # (label, dtype, entry name, source body, options, out dtypes)
    header = None
    for dtype in (np.float32, np.float64):
        for name, fn, args in _fused_cases(dtype):
            kernel, kargs, _ = _trace(fn, args)
            source, options, outs = _kernel_source(kernel, kargs)
            assert all(o == np.dtype(dtype) for o in outs), f"{name} {np.dtype(dtype)}: outputs {outs}"
            lines = source.splitlines()
            i = 0
            while i < len(lines) and (not lines[i].strip() or lines[i].strip().startswith("#include")):
                i += 1
            header = header or (lines[:i], options)
            assert (lines[:i], options) == header, "kernels differ in headers or options"
            entry = f"minidit_{name}_{np.dtype(dtype).name}"
            body = "\n".join(lines[i:]).replace(f'extern "C" __global__ void {kernel.name}(',
                                                 f'extern "C" __global__ void {entry}(')
            assert entry in body, f"{name}: kernel {kernel.name} not found in its source"
            kernels.append((name, np.dtype(dtype), entry, body, outs))
    # one translation unit per arch: the cupy headers once, each kernel in its own namespace
    source = "\n".join(header[0]) + "\n" + "\n".join(f"namespace k{j} {{\n{body}\n}}" for j, (*_, body, _o) in
                                                      enumerate(kernels))
    say(f"{len(kernels)} fused kernels traced by cupy.fuse ({len(kernels) // 2} functions x float32, float64)")
    f64 = first = None
    for arch in ARCHS:
        cubin, ptx = _nvrtc(source, header[1], arch)
        entries = _split_ptx(ptx)
        first = first or entries
        assert {e for *_, e, _b, _o in kernels} <= set(entries), "a kernel is missing from the PTX"
        assert len(cubin) > 1000
        say(f"sm_{arch}: {len(kernels)} of {len(kernels)} kernels compiled by NVRTC ({len(cubin)} bytes of cubin)")
        counts = {e: sum("f64" in ins for ins in entries[e]) for _n, dt, e, _b, _o in kernels if dt == np.float32}
        if f64 is None:
            f64 = counts
        assert counts == f64, "f64 counts differ between archs"
    say("f64 instructions in the float32 kernels: " + ", ".join(f"{e.split('_float32')[0][8:]} {c}"
                                                               for e, c in f64.items()))
    assert all(c == 0 for c in f64.values()), f64
    # and the float64 kernels really are float64 (so the count above can see f64 when it is there)
    assert all(any("f64" in ins for ins in first[e]) for _n, dt, e, _b, _o in kernels if dt == np.float64)


# --- the device path, with only the device faked -----------------------------------------------

def test_synchronize_reaches_the_cuda_runtime(monkeypatch):
    """backend.synchronize() on the GPU: with the device check faked, the call goes through CuPy's
    own Device().synchronize() and stops at the CUDA runtime (no driver here), not in minidit."""
    from minidit import backend
    monkeypatch.setattr(backend, "_import_cupy", lambda: cupy)  # the device check: getDeviceCount, a kernel
    monkeypatch.setattr(backend, "_device", "gpu")
    with pytest.raises(cupy.cuda.runtime.CUDARuntimeError) as e:
        backend.synchronize()
    say(f"backend.synchronize() reached the CUDA runtime: {e.value}")


class _FirstAllocation(Exception):
    pass


def test_doctor_gpu_runs_to_its_first_device_allocation(monkeypatch, capsys):
    """`python -m minidit.doctor --device gpu` with one GPU that answers getDeviceCount, and an
    allocator that stops the run at the first device allocation."""
    from minidit import doctor

    def first_allocation(size):
        raise _FirstAllocation(f"first device allocation ({size} bytes)")

    monkeypatch.setattr(cupy.cuda.runtime, "getDeviceCount", lambda: 1)
    old = cupy.cuda.get_allocator()
    cupy.cuda.set_allocator(first_allocation)
    try:
        try:
            code = doctor.main(["--device", "gpu"])
        except SystemExit as e:
            code = e.code
    finally:
        cupy.cuda.set_allocator(old)
    err = capsys.readouterr().err
    assert code == 2 and "_FirstAllocation" not in err and "first device allocation" in err, (code, err)
    assert not re.search(r"AttributeError|TypeError|ValueError", err), err
    say(f"python -m minidit.doctor --device gpu ran to its first device allocation: {err.strip().splitlines()[-1]}")


def test_nccl_world_on_ranks_0_and_1(monkeypatch):
    """NCCLWorld() on ranks 0 and 1 of a two-rank job against this CuPy's cupy.cuda.nccl (the NCCL
    library installed): rank 0's real unique id reaches rank 1 over (fake) MPI in the form this
    CuPy takes, and the real NcclCommunicator accepts both ranks' arguments and calls NCCL, which
    fails only because there is no GPU (NcclError), not at a TypeError or ValueError of ours."""
    from minidit.training import distributed

    class OneDevicePerRank(cupy.cuda.Device):
        used = []

        def use(self):  # the device: faked
            self.used.append(self.id)

    monkeypatch.setattr(cupy.cuda.runtime, "getDeviceCount", lambda: 2)
    monkeypatch.setattr(cupy.cuda, "Device", OneDevicePerRank)
    passed = []
    real = nccl.NcclCommunicator

    def communicator(ndev, commId, rank):
        passed.append((ndev, commId, rank))
        return real(ndev, commId, rank)

    monkeypatch.setattr(nccl, "NcclCommunicator", communicator)
    sent, errors = [], []
    for rank in (0, 1):
        install_mpi(monkeypatch, FakeComm(rank, 2, sent))
        with pytest.raises(nccl.NcclError) as e:
            distributed.NCCLWorld()
        errors.append(str(e.value))
    (n0, id0, r0), (n1, id1, r1) = passed
    assert (n0, r0, n1, r1) == (2, 0, 2, 1) and id0 == id1 and len(id0) == 128
    assert isinstance(id0, bytes if MAJOR >= 14 else tuple)
    assert OneDevicePerRank.used == [0, 1]
    say(f"NCCLWorld() ranks 0 and 1: one {type(id0).__name__} id of {len(id0)}, NcclCommunicator(2, id, rank) "
        f"reached NCCL: {errors[0].split(':')[0]}")
