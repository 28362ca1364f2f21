"""NCCLWorld's start-up on the CuPy stand-in (whose cupy.cuda.nccl has CuPy 14's signatures: the
unique id is bytes): ranks 0 and 1 of a two-rank job, with a fake MPI (tests/nccl_fakes.py), get
one and the same id and build their communicators. The same construction against the real
cupy.cuda.nccl of CuPy 13 and 14 is in tests/real_cupy (run by .ci/real_cupy.sh)."""
import pytest

from nccl_fakes import FakeComm, install_mpi
from minidit.training import distributed


def test_two_ranks_build_their_communicators_with_one_id(standin, monkeypatch):
    monkeypatch.setattr(standin.cuda.runtime, "device_count", 2)
    used = []
    monkeypatch.setattr(standin.cuda.Device, "use", lambda self: used.append(self.id))
    sent, worlds = [], []
    for rank in (0, 1):
        install_mpi(monkeypatch, FakeComm(rank, 2, sent))
        worlds.append(distributed.NCCLWorld())
    ids = [w.ncomm.commId for w in worlds]
    assert isinstance(ids[0], bytes) and len(ids[0]) == 128
    assert ids[0] == ids[1]
    assert [(w.rank, w.size, w.ncomm.rank, w.ncomm.ndev) for w in worlds] == [(0, 2, 0, 2), (1, 2, 1, 2)]
    assert used == [0, 1]  # one GPU per rank


def test_the_tuple_form_of_cupy_13_travels_unchanged():
    """CuPy 13 gives and takes 128 C chars as a tuple of ints (negative where char is signed)."""
    import numpy as np

    class Nccl13:
        @staticmethod
        def get_unique_id():
            return tuple(int(v) for v in np.arange(-64, 64))

    sent = []
    got = [distributed.nccl_unique_id(Nccl13, FakeComm(r, 2, sent), r, as_bytes=False) for r in (0, 1)]
    assert got[0] == got[1] == Nccl13.get_unique_id()


def test_no_nccl_library_is_named(standin, monkeypatch):
    monkeypatch.delattr(standin.cuda.nccl, "get_unique_id")
    install_mpi(monkeypatch, FakeComm(0, 2, []))
    with pytest.raises(RuntimeError, match="needs NCCL"):
        distributed.NCCLWorld()
