"""A strict stand-in for CuPy, for minidit's test suite only (never installed, never used at run
time): it makes the GPU code paths run, and fail where CuPy would fail, on a machine without a GPU.

tests/conftest.py puts the folder holding this package first on the path when the real CuPy is
not installed, so `import cupy` inside minidit finds it. Arrays live "on the device": a wrapper
around a NumPy array that follows the CuPy rules that matter for minidit:
- no arithmetic or function call mixes a device array with a host (NumPy) array: TypeError;
- no implicit conversion to the host (np.asarray(device_array) raises); `.get()` and
  `cupy.asnumpy` copy explicitly;
- reductions give 0-d device arrays, not Python or NumPy scalars;
- assigning a host array into a device array (`d[...] = host`) raises;
- float(), int(), bool(), .item(), .tolist(), .get() are device-to-host syncs, and
  cupy.asarray(host array) a host-to-device copy: both are counted per call site (`counts`).
`cupy.fuse` runs the decorated Python function on these arrays (the fused kernels' arithmetic is
checked against the NumPy form that way); ElementwiseKernel and RawKernel are not available.
"""
import builtins as _builtins
import collections
import os
import sys
import types

import numpy as _np

__version__ = "14.2.0+minidit-standin"  # the CuPy whose API it imitates (cupy.cuda.nccl included)
STANDIN = True  # how a test tells this from the real CuPy
_HERE = os.path.dirname(os.path.abspath(__file__))

# counters: kind -> Counter(call site "file:line" -> n). "kernel" counts what would be one GPU
# kernel launch: each element-wise operation, reduction, copy or cast, and one per fused function.
counts = {"sync": collections.Counter(), "to_device": collections.Counter(), "kernel": collections.Counter()}
_fusing = [0]  # inside a fused function: its operations are one kernel, counted once


def reset_counts():
    for c in counts.values():
        c.clear()


_inside = {}  # co_filename -> whether it is a file of this stand-in
_names = {}   # (co_filename, working directory) -> the file's path relative to that directory


def _site():
    # called for every operation: the path arithmetic is done once per file, not once per call
    f = sys._getframe(2)
    while f is not None:
        name = f.f_code.co_filename
        here = _inside.get(name)
        if here is None:
            here = _inside[name] = os.path.dirname(os.path.abspath(name)) == _HERE
        if not here:
            break
        f = f.f_back
    if f is None:
        return "?"
    key = (name, os.getcwd())
    rel = _names.get(key)
    if rel is None:
        rel = _names[key] = os.path.relpath(name)
    return f"{rel}:{f.f_lineno}"


def _count(kind):
    if kind == "kernel" and _fusing[0]:
        return
    counts[kind][_site()] += 1


def _host_error(what):
    return TypeError(f"cupy stand-in: {what} mixes a host (NumPy) array with device arrays; "
                     "move it with cupy.asarray first (CuPy raises TypeError here too)")


def _unwrap(x, what="the operation"):
    """Device arrays to their NumPy data; host arrays refused; scalars and others pass."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, _np.ndarray):
        raise _host_error(what)
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(v, what) for v in x)
    return x


def _wrap(x):
    if isinstance(x, _np.ndarray):
        return ndarray(x)
    if isinstance(x, _np.generic):  # a reduction: CuPy keeps it on the device, 0-d
        return ndarray(_np.asarray(x))
    if isinstance(x, (list, tuple)):
        return type(x)(_wrap(v) for v in x)
    return x


class _Flags:
    def __init__(self, a):
        self.c_contiguous = a.flags.c_contiguous
        self.f_contiguous = a.flags.f_contiguous
        self.writeable = a.flags.writeable

    def __getitem__(self, key):
        return {"C_CONTIGUOUS": self.c_contiguous, "F_CONTIGUOUS": self.f_contiguous}[key]


def _index(idx):
    """An index with device arrays unwrapped; host arrays refused as CuPy-like strictness."""
    if isinstance(idx, tuple):
        return tuple(_index(i) for i in idx)
    if isinstance(idx, ndarray):
        return idx._a
    if isinstance(idx, _np.ndarray):
        raise _host_error("indexing with a host array")
    if isinstance(idx, list):
        raise TypeError("cupy stand-in: index with a device array, not a list")
    return idx


class ndarray:
    """A device array: NumPy data that refuses to meet host arrays."""
    __slots__ = ("_a",)
    __array_priority__ = 100

    def __init__(self, a):
        self._a = a

    # what an array is
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: _Flags(self._a))
    T = property(lambda self: ndarray(self._a.T))

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (ndarray(_np.asarray(v)) for v in self._a)

    def __repr__(self):
        return f"stand-in device array(shape={self.shape}, dtype={self.dtype})"

    # the host is reached only explicitly
    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()` "
                        "to construct a NumPy array explicitly. (cupy stand-in)")

    def get(self, stream=None, out=None):
        _count("sync")
        return self._a.copy()

    def item(self):
        _count("sync")
        return self._a.item()

    def tolist(self):
        _count("sync")
        return self._a.tolist()

    def __float__(self):
        _count("sync")
        return float(self._a)

    def __int__(self):
        _count("sync")
        return int(self._a)

    def __bool__(self):
        _count("sync")
        return bool(self._a)

    def __format__(self, spec):
        if self._a.ndim:
            return object.__format__(self, spec) if not spec else f"{self!r}"
        _count("sync")
        return format(self._a.item(), spec)

    def __index__(self):
        _count("sync")
        return self._a.__index__()

    # numpy functions called on device arrays run on the device, as with CuPy
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if "out" in kwargs:
            kwargs["out"] = tuple(_unwrap(o, f"np.{ufunc.__name__}") for o in kwargs["out"])
        args = [_unwrap(x, f"np.{ufunc.__name__}") for x in inputs]
        _count("kernel")
        return _wrap(getattr(ufunc, method)(*args, **kwargs))

    def __array_function__(self, func, types_, args, kwargs):
        mine = globals().get(func.__name__)
        if mine is None or not callable(mine):
            return NotImplemented
        return mine(*args, **kwargs)

    # indexing
    def __getitem__(self, idx):
        if _builtins.any(isinstance(i, ndarray) for i in (idx if isinstance(idx, tuple) else (idx,))):
            _count("kernel")  # a gather
        return _wrap(self._a[_index(idx)])

    def __setitem__(self, idx, value):
        if isinstance(value, _np.ndarray):
            raise TypeError("cupy stand-in: assigning a host (NumPy) array into a device array; "
                            "move it with cupy.asarray first (CuPy raises here too)")
        _count("kernel")
        self._a[_index(idx)] = _unwrap(value, "assignment")

    # methods
    def reshape(self, *shape, order="C"):
        return ndarray(self._a.reshape(*shape, order=order))

    def transpose(self, *axes):
        return ndarray(self._a.transpose(*axes))

    def swapaxes(self, a, b):
        return ndarray(self._a.swapaxes(a, b))

    def astype(self, dtype, order="K", copy=True, **kw):
        _count("kernel")
        return ndarray(self._a.astype(dtype, order=order, copy=copy))

    def copy(self, order="C"):
        _count("kernel")
        return ndarray(self._a.copy(order=order))

    def view(self, *a):
        return ndarray(self._a.view(*a))

    def ravel(self):
        return ndarray(self._a.ravel())

    def fill(self, v):
        self._a.fill(_unwrap(v))

    def repeat(self, repeats, axis=None):
        return ndarray(self._a.repeat(repeats, axis))

    def clip(self, a_min=None, a_max=None):
        return ndarray(self._a.clip(_unwrap(a_min), _unwrap(a_max)))

    def dot(self, other):
        return ndarray(self._a.dot(_unwrap(other, "dot")))


def _reduction(name):
    def method(self, axis=None, dtype=None, out=None, keepdims=False, **kw):
        kwargs = dict(axis=axis, keepdims=keepdims, **kw)
        if dtype is not None:
            kwargs["dtype"] = dtype
        _count("kernel")
        return _wrap(_np.asarray(getattr(self._a, name)(**kwargs)))
    method.__name__ = name
    return method


for _name in ("sum", "mean", "max", "min", "std", "var", "prod", "any", "all", "argmax", "argmin"):
    setattr(ndarray, _name, _reduction(_name))


def _binary(op, reflected=False):
    def method(self, other):
        if isinstance(other, _np.ndarray):
            raise _host_error(f"the operator {op.__name__}")
        o = other._a if isinstance(other, ndarray) else other
        _count("kernel")
        return _wrap(op(o, self._a) if reflected else op(self._a, o))
    return method


def _inplace(op):
    def method(self, other):
        if isinstance(other, _np.ndarray):
            raise _host_error(f"the in-place operator {op.__name__}")
        _count("kernel")
        op(self._a, other._a if isinstance(other, ndarray) else other, out=self._a)
        return self
    return method


for _name, _op in (("add", _np.add), ("sub", _np.subtract), ("mul", _np.multiply), ("truediv", _np.true_divide),
                   ("floordiv", _np.floor_divide), ("mod", _np.mod), ("pow", _np.power), ("matmul", _np.matmul),
                   ("and", _np.logical_and), ("or", _np.logical_or), ("xor", _np.bitwise_xor)):
    if _name in ("and", "or", "xor"):
        _op = {"and": _np.bitwise_and, "or": _np.bitwise_or, "xor": _np.bitwise_xor}[_name]
    setattr(ndarray, f"__{_name}__", _binary(_op))
    setattr(ndarray, f"__r{_name}__", _binary(_op, reflected=True))
    if _name != "matmul":
        setattr(ndarray, f"__i{_name}__", _inplace(_op))
for _name, _op in (("lt", _np.less), ("le", _np.less_equal), ("gt", _np.greater), ("ge", _np.greater_equal),
                   ("eq", _np.equal), ("ne", _np.not_equal)):
    setattr(ndarray, f"__{_name}__", _binary(_op))
ndarray.__neg__ = lambda self: ndarray(-self._a)
ndarray.__pos__ = lambda self: self
ndarray.__abs__ = lambda self: ndarray(_np.abs(self._a))
ndarray.__invert__ = lambda self: ndarray(~self._a)
ndarray.__hash__ = None


# module functions: NumPy's, on unwrapped device arrays, refusing host arrays ----------------------

_VIEWS = {"transpose", "reshape", "moveaxis", "expand_dims", "broadcast_to", "swapaxes", "squeeze", "split"}


def _function(name):
    fn = getattr(_np, name)

    def wrapper(*args, **kwargs):
        a = [_unwrap(x, f"cupy.{name}") for x in args]
        k = {key: _unwrap(v, f"cupy.{name}") for key, v in kwargs.items()}
        if name not in _VIEWS:
            _count("kernel")
        return _wrap(fn(*a, **k))
    wrapper.__name__ = name
    return wrapper


for _name in ("concatenate", "stack", "split", "exp", "log", "sqrt", "tanh", "sin", "cos", "maximum", "minimum",
              "where", "multiply", "add", "subtract", "divide", "true_divide", "power", "negative", "square",
              "abs", "clip", "zeros_like", "ones_like", "empty_like", "full_like", "matmul", "sum", "mean",
              "moveaxis", "pad", "isfinite", "isnan", "expand_dims", "einsum", "broadcast_to",
              "ascontiguousarray", "asfortranarray", "transpose", "reshape", "argmax", "all", "any", "flatnonzero",
              "cumsum", "sign", "outer", "dot", "tensordot", "swapaxes", "repeat", "tile", "take",
              "squeeze", "log1p", "expm1", "floor", "ceil", "rint", "round", "std", "var", "max", "min",
              "amax", "amin", "equal", "less", "greater", "logical_and", "logical_or", "logical_not",
              "array_equal", "allclose", "isclose", "nonzero", "unique", "sort", "argsort", "diag",
              "triu", "tril", "roll", "flip", "arctan", "reciprocal"):
    globals()[_name] = _function(_name)

for _name in ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool_", "intp",
              "dtype", "newaxis", "pi", "e", "inf", "nan", "float_", "complex64", "complex128", "finfo",
              "iinfo", "result_type", "promote_types", "isscalar", "ndim", "shape"):
    if hasattr(_np, _name):
        globals()[_name] = getattr(_np, _name)


def _creation(name):
    fn = getattr(_np, name)

    def wrapper(*args, **kwargs):
        _count("kernel")
        return ndarray(fn(*[_unwrap(x, f"cupy.{name}") for x in args], **kwargs))
    wrapper.__name__ = name
    return wrapper


for _name in ("zeros", "ones", "empty", "full", "arange", "linspace", "eye", "identity", "tri"):
    globals()[_name] = _creation(_name)


def asarray(a, dtype=None, order=None):
    """A device array: a copy from the host (counted) unless `a` already lives on the device."""
    if isinstance(a, ndarray):
        return a if dtype is None or a.dtype == dtype else a.astype(dtype)
    _count("to_device")
    return ndarray(_np.array(a, dtype=dtype, order=order or "K", copy=True))


array = asarray


def asnumpy(a, stream=None, out=None):
    if isinstance(a, ndarray):
        _count("sync")
        return a._a.copy()
    return _np.asarray(a)


def get_array_module(*args):
    return sys.modules[__name__] if _builtins.any(isinstance(a, ndarray) for a in args) else _np


def fuse(*args, **kwargs):
    """cupy.fuse compiles a Python function of element-wise operations into one kernel; the
    stand-in runs the function as written, on device arrays, and counts one kernel. As CuPy's
    fused function, it takes positional arguments only."""
    def decorate(fn):
        def fused(*a, **k):
            if k:  # CuPy: Fusion.__call__(self, *args)
                raise TypeError(f"__call__() got an unexpected keyword argument {next(iter(k))!r}")
            _count("kernel")
            _fusing[0] += 1
            try:
                return fn(*a)
            finally:
                _fusing[0] -= 1
        fused.__name__ = fn.__name__
        return fused
    if args and callable(args[0]) and not kwargs:
        return decorate(args[0])
    return decorate


class ElementwiseKernel:
    def __init__(self, *a, **k):
        raise NotImplementedError("the cupy stand-in cannot compile CUDA kernels")


RawKernel = ElementwiseKernel

# cupy.lib.stride_tricks, cupy.cuda ---------------------------------------------------------

lib = types.SimpleNamespace(stride_tricks=types.SimpleNamespace(
    as_strided=lambda x, shape=None, strides=None, **kw: ndarray(
        _np.lib.stride_tricks.as_strided(_unwrap(x), shape=shape, strides=strides, **kw))))


class _Device:
    """cupy.cuda.Device: Device() is the current device, Device(i) device i."""

    def __init__(self, device=None):
        self.id = 0 if device is None else int(device)
        if not 0 <= self.id < cuda.runtime.device_count:
            raise RuntimeError(f"cupy stand-in: no device {self.id}")

    def use(self):
        pass

    def synchronize(self):
        _count("sync")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _Stream:
    """cupy.cuda.Stream (the null stream only)."""
    ptr = 0

    def synchronize(self):
        _count("sync")


class _Runtime:
    device_count = 1  # a test sets it to 0 to see what minidit does without a GPU

    def getDeviceCount(self):
        return self.device_count

    def getDevice(self):
        return 0

    def deviceSynchronize(self):
        _count("sync")

    def getDeviceProperties(self, i):
        return {"name": b"minidit CuPy stand-in (NumPy on the CPU)", "totalGlobalMem": 0}

    def runtimeGetVersion(self):
        return 0


class _NcclCommunicator:
    """cupy.cuda.nccl.NcclCommunicator of CuPy 14: the id is `bytes` (CuPy 13 took a tuple)."""

    def __init__(self, ndev, commId, rank):
        if not isinstance(commId, bytes):
            raise TypeError(f"Argument 'commId' has incorrect type (expected bytes, got {type(commId).__name__})")
        if len(commId) != _NCCL_ID_BYTES:
            raise ValueError(f"commId length {len(commId)} != {_NCCL_ID_BYTES}.")
        if not 0 <= int(rank) < int(ndev):
            raise ValueError(f"cupy stand-in: rank {rank} outside 0..{ndev - 1}")
        self.ndev, self.commId, self.rank = int(ndev), commId, int(rank)

    def allGather(self, sendbuf, recvbuf, count, datatype, stream):
        raise NotImplementedError("the cupy stand-in has no NCCL transport")


# cupy.cuda.nccl as CuPy 14 has it with the NCCL library installed (values as in nccl.h; the
# id's length, NCCL_UNIQUE_ID_BYTES, is not a Python name there)
_NCCL_ID_BYTES = 128
_nccl = types.SimpleNamespace(
    NCCL_FLOAT32=7, NCCL_FLOAT64=8, NCCL_SUM=0,
    get_unique_id=lambda: os.urandom(_NCCL_ID_BYTES), NcclCommunicator=_NcclCommunicator)
sys.modules[__name__ + ".cuda.nccl"] = _nccl

cuda = types.SimpleNamespace(runtime=_Runtime(), Device=_Device, Stream=_Stream, nccl=_nccl,
                             get_current_stream=lambda: _Stream(),
                             is_available=lambda: cuda.runtime.device_count > 0)
sys.modules[__name__ + ".cuda"] = cuda

# names that only the stand-in has: the test knobs (tests/real_cupy checks every other public
# name of this module against the real CuPy)
STANDIN_ONLY = {"STANDIN", "STANDIN_ONLY", "counts", "reset_counts", "cuda.runtime.device_count"}
