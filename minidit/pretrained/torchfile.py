"""Reading PyTorch's checkpoint files without PyTorch (docs/paper.md §6.1).

`torch.save` (PyTorch 1.6 and newer) writes a zip archive: `<prefix>/data.pkl` is a pickle of the
saved object in which every tensor is a call `torch._utils._rebuild_tensor_v2(storage, offset,
size, stride, ...)`, and every storage is a *persistent id* `("storage", torch.FloatStorage, key,
location, numel)` whose raw little-endian bytes are the zip entry `<prefix>/data/<key>`. The
entries are stored uncompressed, so each storage can be memory-mapped straight out of the file
instead of copied: a 2.7 GB DiT-XL/2 costs no memory until its pages are read.

A pickle is a small program: unpickling calls whatever functions it names, `os.system` included.
So the unpickler here is a closed list. It knows exactly the globals a state_dict (or a DiT
training checkpoint) uses - `collections.OrderedDict`, the tensor rebuilders, the storage types,
and `argparse.Namespace` for the `args` of a training checkpoint - maps each to a NumPy
equivalent, and refuses every other global with an error naming it, before anything runs.
That refusal is the security boundary: never open an untrusted file with the standard
`pickle.load` (or `torch.load(weights_only=False)`).
"""
import collections
import mmap
import pickle
import struct
import types
import zipfile
from pathlib import Path

import numpy as np

# storage class name -> NumPy dtype of its elements (bfloat16 is widened to float32 on load)
_STORAGES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
             "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32,
             "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
             "BoolStorage": np.bool_}


class UnsafeFileError(pickle.UnpicklingError, ValueError):
    """The pickle asked for a global this loader does not know (and will not call). A ValueError
    too, so that every command reports it as bad input in one line."""


class _Storage:
    """A storage's persistent id, resolved to a flat NumPy array over the file's bytes."""

    def __init__(self, array):
        self.array = array


def _rebuild_tensor(storage, offset, size, stride, *_):
    """_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, hooks[, metadata])."""
    flat = storage.array
    size, stride = tuple(size), tuple(stride)
    if not size:
        return flat[offset].copy()
    needed = offset + 1 + sum((n - 1) * s for n, s in zip(size, stride))
    if min(size) > 0 and needed > flat.size:
        raise ValueError(f"a tensor of size {size} reaches past the end of its storage ({flat.size} elements)")
    if min(size) == 0:
        return np.empty(size, dtype=flat.dtype)
    return np.lib.stride_tricks.as_strided(flat[offset:], shape=size,
                                           strides=tuple(s * flat.itemsize for s in stride), writeable=False)


def _rebuild_parameter(data, requires_grad=None, hooks=None, *_):
    return data


def _new_namespace(cls, *args):
    if cls is not types.SimpleNamespace:
        raise UnsafeFileError(f"__newobj__ asked to build {cls!r}")
    return types.SimpleNamespace()


def _storage_class(name):
    return type(name, (), {"dtype": _STORAGES[name]})


_ALLOWED = {("collections", "OrderedDict"): collections.OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
            ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
            ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
            ("argparse", "Namespace"): types.SimpleNamespace,
            ("copyreg", "__newobj__"): _new_namespace,
            **{("torch", name): _storage_class(name) for name in _STORAGES}}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, storage_reader, source):
        super().__init__(file)
        self._read_storage, self._source = storage_reader, source

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafeFileError(
                f"{self._source}: the file asks to load the Python global {module}.{name}, which is not "
                f"part of a PyTorch state_dict; refusing it (a pickle can run arbitrary code). Only "
                f"tensors, OrderedDicts and training-checkpoint containers are read.") from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise UnsafeFileError(f"{self._source}: unknown persistent id {pid!r:.80}")
        storage_type, key, _location, numel = pid[1:5]
        dtype = getattr(storage_type, "dtype", None)
        if dtype is None:
            raise UnsafeFileError(f"{self._source}: unknown storage type {storage_type!r}")
        return _Storage(self._read_storage(str(key), dtype, int(numel)))


def _entry_offset(mm, info, path):
    """Where the bytes of a stored (uncompressed) zip entry start in the file."""
    header = mm[info.header_offset:info.header_offset + 30]
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        raise ValueError(f"{path}: damaged zip entry {info.filename}")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len


def load_torch_file(path):
    """Everything torch.save put in `path`, with tensors as read-only NumPy arrays.

    Float32/float64/float16/integer storages are memory-mapped (no copy); bfloat16 is widened to
    float32. Raises ValueError naming the file for a truncated or non-PyTorch file (including the
    pre-1.6 non-zip format) and UnsafeFileError for a pickle that names an unknown global.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such weight file: {path}")
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":
            raise ValueError(f"{path}: not a PyTorch zip checkpoint (torch.save of PyTorch >= 1.6); "
                             f"a truncated download, or an older or different format")
        size = f.seek(0, 2)
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        z = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise ValueError(f"{path}: the zip archive is incomplete ({size:,} bytes; its directory at the end "
                         f"is missing): a truncated download? Fetch the file again.") from None
    with z:
        pkl = [n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise ValueError(f"{path}: a zip archive, but not one torch.save wrote (no single data.pkl)")
        prefix = pkl[0][: -len("data.pkl")]
        infos = {i.filename: i for i in z.infolist()}

        def read_storage(key, dtype, numel):
            info = infos.get(f"{prefix}data/{key}")
            if info is None:
                raise ValueError(f"{path}: storage {key} is missing from the archive")
            wide = dtype == "bfloat16"
            item = 2 if wide else np.dtype(dtype).itemsize
            if info.file_size < numel * item:
                raise ValueError(f"{path}: storage {key} holds {info.file_size} bytes, expected {numel * item}")
            if info.compress_type == zipfile.ZIP_STORED:
                start = _entry_offset(mm, info, path)
                if start + numel * item > size:
                    raise ValueError(f"{path}: storage {key} reaches past the end of the file: truncated")
                raw = np.frombuffer(mm, dtype=np.uint16 if wide else dtype, count=numel, offset=start)
            else:  # a compressed entry cannot be mapped: read it
                raw = np.frombuffer(z.read(info), dtype=np.uint16 if wide else dtype, count=numel)
            if wide:
                return (raw.astype(np.uint32) << 16).view(np.float32)
            return raw

        try:
            with z.open(pkl[0]) as fp:
                return _Unpickler(fp, read_storage, path).load()
        except (EOFError, zipfile.BadZipFile, struct.error) as e:
            raise ValueError(f"{path}: damaged pickle ({e}): a truncated or corrupted file?") from None
