"""A fake mpi4py for constructing minidit's NCCLWorld without MPI: the ranks of a two-rank job run
one after the other in this process, and Bcast hands rank 0's buffer to the later ranks. Used by
tests/test_nccl_world.py (on the CuPy stand-in) and tests/real_cupy (on the real CuPy)."""
import sys
import types

import numpy as np


class FakeComm:
    """COMM_WORLD of one rank; `sent` is shared by the ranks of one job (root's Bcast buffers, in order)."""

    def __init__(self, rank, size, sent):
        self.rank, self.size, self.sent, self._received = rank, size, sent, 0

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.size

    def Split_type(self, kind):
        return self  # every rank on one machine: local rank = rank

    def Free(self):
        pass

    def Bcast(self, buf, root=0):
        if self.rank == root:
            self.sent.append(np.array(buf, copy=True))
        else:
            data = self.sent[self._received]
            if data.shape != buf.shape or data.dtype != buf.dtype:
                raise ValueError(f"Bcast: rank {self.rank} receives {buf.dtype}{buf.shape}, root sent "
                                 f"{data.dtype}{data.shape}")
            buf[...] = data
            self._received += 1


def install_mpi(monkeypatch, comm):
    """Make `from mpi4py import MPI` give a module whose COMM_WORLD is `comm`."""
    mpi = types.ModuleType("mpi4py.MPI")
    mpi.COMM_WORLD, mpi.COMM_TYPE_SHARED = comm, 0
    pkg = types.ModuleType("mpi4py")
    pkg.MPI = mpi
    monkeypatch.setitem(sys.modules, "mpi4py", pkg)
    monkeypatch.setitem(sys.modules, "mpi4py.MPI", mpi)
