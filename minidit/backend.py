"""Array backend: NumPy on the CPU, CuPy on the GPU, chosen in one place.

This is the only module of minidit that imports CuPy. Library code asks
`xp = get_array_module(x)` and writes array math against `xp`, so the same layer runs on
either library. Random numbers come from one seeded generator that draws on the host, so a
CPU run and a GPU run with the same seed see the same data, noise and timesteps.
"""
import os

import numpy as np

ENV_VAR = "MINIDIT_DEVICE"
DEVICES = ("cpu", "gpu", "auto")

_device = None  # resolved lazily from the environment on first use


def _import_cupy():
    """Return the cupy module if it imports and a GPU answers, else raise RuntimeError."""
    try:
        import cupy
    except ImportError as e:  # pragma: no cover - depends on the machine
        raise RuntimeError("device 'gpu' needs CuPy: pip install 'minidit[gpu]' "
                           "(or a cupy-cudaXXx wheel matching your CUDA)") from e
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("no CUDA device found")
        cupy.zeros(1).sum()  # touch the device so a broken driver fails here, not later
    except Exception as e:  # pragma: no cover - depends on the machine
        raise RuntimeError(f"device 'gpu' requested but CuPy cannot use a GPU: {e}") from e
    return cupy


def gpu_available():
    """True when CuPy imports and a GPU runs a kernel."""
    try:
        _import_cupy()
        return True
    except RuntimeError:
        return False


def resolve_device(device=None):
    """Turn 'cpu' | 'gpu' | 'auto' | None into 'cpu' or 'gpu' (None reads MINIDIT_DEVICE, default cpu)."""
    if device is None:
        device = os.environ.get(ENV_VAR, "cpu") or "cpu"
    device = str(device).lower()
    if device == "cuda":
        device = "gpu"
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}: choose one of {DEVICES} "
                         f"(argument or environment variable {ENV_VAR})")
    if device == "auto":
        return "gpu" if gpu_available() else "cpu"
    if device == "gpu":
        _import_cupy()  # raises a clear error when CuPy or the GPU is missing
    return device


def set_device(device=None):
    """Select the default device for new arrays; returns the resolved name."""
    global _device
    _device = resolve_device(device)
    return _device


def get_device():
    """The current default device name, 'cpu' or 'gpu'."""
    if _device is None:
        set_device(None)
    return _device


def get_xp(device=None):
    """The array module (numpy or cupy) for a device name (default: the current device)."""
    device = get_device() if device is None else resolve_device(device)
    return _import_cupy() if device == "gpu" else np


def get_array_module(*arrays):
    """numpy or cupy, whichever owns the arrays (numpy for plain Python values)."""
    for a in arrays:
        if type(a).__module__.startswith("cupy"):
            import cupy
            return cupy
    return np


def is_gpu_array(x):
    return type(x).__module__.startswith("cupy")


def device_of(x):
    """'gpu' for a CuPy array, 'cpu' for anything else."""
    return "gpu" if is_gpu_array(x) else "cpu"


def to_numpy(x):
    """Copy an array (or a dict/list/tuple of arrays) to host NumPy; other values pass through."""
    if isinstance(x, dict):
        return {k: to_numpy(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(to_numpy(v) for v in x)
    if is_gpu_array(x):
        return x.get()
    return x


def to_device(x, device=None):
    """Move an array (or a dict/list/tuple of arrays) to a device (default: the current one)."""
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(to_device(v, device) for v in x)
    if x is None or np.isscalar(x):
        return x
    xp = get_xp(device)
    if xp is np:
        return to_numpy(x) if is_gpu_array(x) else np.asarray(x)
    return xp.asarray(x)


def on_device_of(x, a):
    """`a` (a small array: timesteps, labels, indices) on the device of the array x, copied only
    when it lives elsewhere. Public functions take t and y from either side and call this."""
    if is_gpu_array(x) == is_gpu_array(a):
        return a
    return to_numpy(a) if not is_gpu_array(x) else get_array_module(x).asarray(a)


# NumPy makes one pass over memory for every element-wise operation. A chain of ten or more of
# them over a big array (GELU's backward, AdamW's update) runs faster block by block: a block of
# 64K float32 values (256 KB) stays in the CPU core's L2 cache from one operation to the next.
CACHE_BLOCK = 1 << 16


def cache_blocks(*arrays):
    """Yield matching pieces of same-sized arrays, to run a chain of element-wise operations on.

    NumPy arrays that are all C-contiguous and larger than CACHE_BLOCK come as 1-D views of
    CACHE_BLOCK elements (writes to them land in the arrays). Anything else, CuPy arrays
    included (there one kernel over the whole array is best), comes as one piece: the arrays
    themselves, in their own shapes.
    """
    size = arrays[0].size
    if any(a.size != size for a in arrays):
        raise ValueError(f"cache_blocks: arrays differ in size, {[tuple(a.shape) for a in arrays]}")
    if (get_array_module(*arrays) is not np or size <= CACHE_BLOCK
            or not all(a.flags.c_contiguous for a in arrays)):
        yield arrays
        return
    flat = [a.reshape(-1) for a in arrays]
    for i in range(0, size, CACHE_BLOCK):
        yield tuple(f[i:i + CACHE_BLOCK] for f in flat)


# glibc's malloc hands memory of a freed large array back to the kernel (munmap, or trimming the
# top of the heap) and takes fresh pages for the next one, which the kernel must zero on first
# touch. A training step frees and allocates the same arrays every time: on the main job's model
# that was 25,000 page faults (about 100 MB) and 40 to 54 ms of kernel time per step
# (docs/performance.md, "Keeping freed memory"). These settings keep freed memory in the process
# for reuse, as PyTorch's caching allocator does on the GPU.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)
MMAP_THRESHOLD = 32 << 20  # arrays above this still get their own mapping (glibc's largest value)
TRIM_THRESHOLD = 1 << 30  # free memory at the heap's top is handed back only beyond 1 GiB


def glibc_malloc():
    """True where this process's C library (and so its malloc) is glibc's, which keep_freed_memory tunes."""
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")  # e.g. "glibc 2.36"
    except (ValueError, OSError, AttributeError):  # no such name outside glibc systems
        return False


def keep_freed_memory():
    """Make glibc's malloc keep freed memory for reuse instead of handing it back to the kernel
    (arrays up to MMAP_THRESHOLD come from the heap, and up to TRIM_THRESHOLD of free memory stays
    mapped). The process's memory then stays at its peak instead of shrinking between steps.

    Every minidit command calls this before its work (minidit.cli.run_command); a library user
    may call it too. Returns True when the settings were applied; False where malloc is not
    glibc's (macOS, Windows, musl) or where the user set glibc's own MALLOC_MMAP_THRESHOLD_ or
    MALLOC_TRIM_THRESHOLD_, whose choice stands.
    """
    import ctypes
    if not glibc_malloc() or any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # pragma: no cover - depends on the C library
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def synchronize(device=None):
    """Wait for queued GPU work to finish (a no-op on the CPU); call before reading a timer.

    `cupy.cuda.Device()` is the current device (CuPy 13 and 14 alike; CuPy has no function that
    returns it)."""
    if (get_device() if device is None else resolve_device(device)) == "gpu":
        _import_cupy().cuda.Device().synchronize()


class Generator:
    """One seeded random source for the whole program, identical on CPU and GPU.

    Every draw is made by NumPy's PCG64 on the host and then moved to the device, so the
    numbers depend only on the seed and the sequence of calls, never on the backend. Its state
    can be saved and restored exactly (`get_state` / `set_state`), which is what makes a
    resumed training run continue bit for bit.
    """

    def __init__(self, seed=0, device=None):
        self.seed = seed
        self.device = device
        self.rng = np.random.Generator(np.random.PCG64(seed))

    def _out(self, a, device):
        return to_device(a, self.device if device is None else device)

    def normal(self, shape, dtype=np.float32, device=None):
        return self._out(self.rng.standard_normal(shape).astype(dtype), device)

    def uniform(self, shape, low=0.0, high=1.0, dtype=np.float32, device=None):
        return self._out(self.rng.uniform(low, high, shape).astype(dtype), device)

    def integers(self, low, high, shape, device=None):
        """Integers in [low, high), int64."""
        return self._out(self.rng.integers(low, high, shape, dtype=np.int64), device)

    def permutation(self, n):
        """A host permutation of range(n) (used to shuffle data indices)."""
        return self.rng.permutation(n)

    def spawn_host(self):
        """The underlying NumPy generator, for host-side work such as data augmentation."""
        return self.rng

    def get_state(self):
        return self.rng.bit_generator.state

    def set_state(self, state):
        self.rng.bit_generator.state = state
