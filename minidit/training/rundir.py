"""The folder of one training run, shared by every training command (DiT, VAE, classifier).

    out/checkpoints/step_0001000.npz   the newest `keep` checkpoints (minidit.training.checkpoint)
    out/log.jsonl                      one JSON record per logged step, each step once, in order
    out/loss.png                       the logged losses against the step (redrawn at a checkpoint
                                       at most every PLOT_EVERY_S seconds, and at the last step)
    out/...                            what the command adds (samples/, vae.npz, classifier.npz)
    out/.minidit.lock                  while a run uses the folder: its process id

The promises (docs/commands.md): a command writes only into a new or empty folder or one that
holds a run of ours (a checkpoint, or the lock of a run that was killed), and refuses any other
folder, with or without flags, naming the first file it did not write; --overwrite deletes only
files a run writes; a folder holding a run is never reused by accident (--resume continues it,
--overwrite starts over); nothing is created or deleted before the command's inputs have been
checked, and a run that fails before its first checkpoint leaves nothing behind, not even the
folder; the lock is created exclusively, so of two runs started together on one folder exactly
one runs; a checkpoint is written only when every weight in it is finite; --resume continues
from the newest checkpoint that loads; a resumed run forgets the log records written after its
checkpoint; the temporary files of a write interrupted by a kill are removed at the next start.
The lock itself is minidit/training/lock.py. The module is about 370 lines because these rules,
the resume checks and the state a checkpoint carries read best together.
"""
import json
import os
import shutil
import socket
import time
from pathlib import Path

import numpy as np

from ..cli import CommandFailed, TrainingDiverged, is_temporary
from .checkpoint import checkpoints_of, load_checkpoint, non_finite, save_checkpoint
from .lock import LOCK, is_alive, in_use_error, read_owner, release_lock, take_lock
from .viz import plot_loss_curve, read_log

BROKEN = ".broken"  # a checkpoint --resume could not load, kept under this suffix


def _is_ours(path, outputs):
    """Whether a top-level entry of a run folder is something a run of ours writes."""
    name = path.name
    if name == LOCK or name.startswith(LOCK + ".") or is_temporary(name) or (name in outputs and not path.is_dir()):
        return True
    if name == "checkpoints" and path.is_dir() and not path.is_symlink():
        return all(p.is_file() and ((p.name.startswith("step_") and p.name.endswith((".npz", ".npz" + BROKEN)))
                                    or is_temporary(p.name)) for p in path.iterdir())
    if name == "samples" and path.is_dir() and not path.is_symlink():
        return all(p.is_file() and ((p.name.startswith("step_") and p.suffix == ".png") or is_temporary(p.name))
                   for p in path.iterdir())
    return False


def foreign_files(folder, is_ours):
    """The entries of `folder` that `is_ours(path)` does not claim, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if not is_ours(p)), key=lambda p: p.name)


def refuse_foreign(folder, foreign, flag="--out"):
    """The FileExistsError naming the first of `foreign` (entries of `folder` a run did not
    write; a folder is shown with a slash), to raise."""
    shown = ", ".join(p.name + ("/" if p.is_dir() else "") for p in foreign[:3])
    more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
    return FileExistsError(f"{flag} {folder} holds files a minidit run did not write ({shown}{more}); "
                           f"a command writes only into a new or empty folder or its own: move them, "
                           f"or choose another {flag}")


def check_log(path):
    """The records of a run's log.jsonl, ValueError naming the line unless every line is a
    record of ours (a JSON object with an integer "step"); a last line cut short by a kill is
    dropped."""
    rows = read_log(path)
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or not isinstance(r.get("step"), int):
            raise ValueError(f"{path}, line {i + 1}: not a record of a minidit run ({str(r)[:40]}); "
                             f"move the file if it is yours")
    return rows


class RunDir:
    """One run's folder. `RunDir(out, resume, overwrite)` checks the request against what is on
    disk and raises FileExistsError, FileNotFoundError or ValueError with the flag to use;
    `start(step)` then takes the lock and prepares the folder, once the command has checked its
    other inputs; `close()` releases the lock and, when the run wrote no checkpoint, removes
    everything it created."""

    # what a run writes (evals.json: `python -m minidit.experiments`'s scores of the checkpoints)
    RUN_FILES = ("checkpoints", "log.jsonl", "loss.png", "samples", "evals.json")

    def __init__(self, out, resume=False, overwrite=False, keep=2, outputs=(), log=print):
        if resume and overwrite:
            raise ValueError("--resume and --overwrite contradict each other")
        if keep < 1:
            raise ValueError(f"--keep must be positive, got {keep}")
        if not str(out).strip():
            raise ValueError("--out is empty; name the run's folder (--out . for the current folder)")
        self.path = Path(out)
        self.resume, self.overwrite, self.keep, self._log = resume, overwrite, keep, log
        self.outputs = tuple(self.RUN_FILES) + tuple(outputs)  # what --overwrite may delete
        self._locked = self._started = False
        self._created, self._had, self._saved = [], set(), 0
        self.skipped = []  # (checkpoint, why) that --resume could not load
        self._plotted_at = None  # time.monotonic() of the last loss.png drawn by this process
        for parent in [self.path, *self.path.resolve().parents]:
            if parent.exists():
                if not parent.is_dir():
                    raise FileExistsError(f"--out {self.path}: {parent} is a file, not a folder")
                if not os.access(parent, os.W_OK):
                    raise PermissionError(13, "the folder is not writable", str(parent))
                break
        self._check_lock()
        foreign = foreign_files(self.path, lambda p: _is_ours(p, self.outputs))
        if foreign:
            raise refuse_foreign(self.path, foreign)
        existing = checkpoints_of(self.path)
        if not existing and not self.lock_path.exists():  # files named as ours, but no run of ours
            named = [p for p in foreign_files(self.path, lambda p: is_temporary(p.name) or (
                p.is_dir() and not p.is_symlink() and not any(p.iterdir())))]
            if named:
                raise FileExistsError(f"--out {self.path} holds {named[0].name} but no checkpoint, so no minidit "
                                      f"run wrote it there; move it, or choose another --out")
        if existing and not resume and not overwrite:
            raise FileExistsError(f"{self.path} already holds a run ({existing[-1].name}); pass --resume "
                                  "to continue it or --overwrite to start over")
        if resume and not existing:
            raise FileNotFoundError(f"--resume: {self.path} holds no checkpoint to resume from")
        self.resume_from = self._loadable(existing) if resume else None
        if resume and self.log_path.exists():
            check_log(self.log_path)
        self.last_checkpoint = self.resume_from

    def _loadable(self, existing):
        """The newest checkpoint that loads with finite weights; the newer ones are noted in
        self.skipped. ValueError (the newest's problem) when none does."""
        first_error = None
        for ckpt in reversed(existing):
            try:
                meta, groups = load_checkpoint(ckpt)
                check_resumable(meta, groups, ckpt)
                return ckpt
            except ValueError as e:
                first_error = first_error or e
                self.skipped.append((ckpt, str(e)))
        older = f" (nor does any of the {len(existing) - 1} older ones)" if len(existing) > 1 else ""
        raise ValueError(f"{first_error}{older}")

    @property
    def log_path(self):
        return self.path / "log.jsonl"

    @property
    def lock_path(self):
        return self.path / LOCK

    def _check_lock(self):
        """FileExistsError when a live process holds the folder's lock."""
        _, owner = read_owner(self.lock_path, tries=3)
        if owner is not None and owner != (os.getpid(), socket.gethostname()) and is_alive(*owner):
            raise in_use_error(self.path, owner, self.lock_path)

    def start(self, step=0):
        """Take the lock (exclusively); with --overwrite delete the previous run's files; set
        aside the checkpoints --resume skipped; remove the temporary files of interrupted writes;
        keep only the log records up to `step` (the resumed checkpoint's; 0 for a new run)."""
        missing = []
        for parent in [self.path, *self.path.absolute().parents]:
            if parent.exists():
                break
            missing.append(parent)
        # recorded before they happen, so that an interrupt at any point leaves close() knowing
        self._created = missing  # deepest first: what close() removes when nothing was kept
        self._started = True
        self.path.mkdir(parents=True, exist_ok=True)
        take_lock(self.path)
        self._locked = True
        self._had = set(self.outputs)  # until the folder is prepared, close() deletes nothing
        if self.overwrite:
            for name in self.outputs:
                p = self.path / name
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                elif p.exists() or p.is_symlink():
                    p.unlink()
        for ckpt, why in self.skipped:
            ckpt.replace(ckpt.with_name(ckpt.name + BROKEN))
            self._log(f"note: skipped {ckpt} ({why}); it is kept as {ckpt.name + BROKEN}, and the run "
                      f"continues from {self.resume_from.name}")
        for folder in (self.path, self.path / "checkpoints", self.path / "samples"):
            if folder.is_dir():
                for p in folder.iterdir():
                    if p.is_file() and is_temporary(p.name):
                        p.unlink()
        self._had = {name for name in self.outputs if (self.path / name).exists()}
        if self.log_path.exists():
            keep = [r for r in check_log(self.log_path) if r["step"] <= step]
            self.log_path.write_text("".join(json.dumps(r) + "\n" for r in keep))
        return self

    def close(self):
        """Release the lock (the run is over, finished or not). A new run that wrote no
        checkpoint leaves nothing: the files and folders it created are removed."""
        if self._locked and not self.resume and self._saved == 0 and self.last_checkpoint is None:
            for name in self.outputs:
                p = self.path / name
                if name in self._had or not (p.exists() or p.is_symlink()):
                    continue
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
        if self._started:  # also a lock taken just before an interrupt; only ever this process's own
            release_lock(self.path)
            self._locked = False
        if self._started and self._saved == 0 and self.last_checkpoint is None:
            for folder in self._created:
                try:
                    folder.rmdir()  # only when empty
                except OSError:
                    break
        self._started = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def log(self, record):
        """Append one record (a JSON-able dict with a "step") to log.jsonl, whole or not at all:
        a failed write (a full disk) is cut back off and stops the run (CommandFailed)."""
        data = (json.dumps(record) + "\n").encode()
        try:
            fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as e:
            raise self.write_failed(e, self.log_path) from e
        size = os.fstat(fd).st_size
        try:
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
        except OSError as e:
            try:
                os.ftruncate(fd, size)  # no half-written last line
            except OSError:
                pass
            raise self.write_failed(e, self.log_path) from e
        finally:
            os.close(fd)

    def save(self, step, meta, **groups):
        """Write checkpoints/step_<step>.npz atomically, then delete all but the newest `keep`.

        Raises TrainingDiverged, writing nothing, when a weight is not finite (so every checkpoint
        on disk is one to resume or sample from), and CommandFailed when the write fails (a full
        disk): the previous checkpoints are kept either way."""
        bad = non_finite(groups)
        if bad is not None:
            raise TrainingDiverged(f"the weights became non-finite by step {step} ({bad}); nothing was written "
                                   f"and the newest checkpoint, {self._newest()}, is finite")
        target = self.path / "checkpoints" / f"step_{step:07d}.npz"
        try:
            path = save_checkpoint(target, dict(meta, step=step), **groups)
        except OSError as e:
            raise self.write_failed(e, f"the checkpoint {target}") from e
        self._saved += 1
        for old in checkpoints_of(self.path)[:-self.keep]:
            old.unlink()
        self.last_checkpoint = path
        return path

    def _newest(self):
        return self.last_checkpoint or "none (none was written yet, so nothing is kept)"

    def write_failed(self, e, what):
        """The CommandFailed error for an OSError (a full disk...) while writing `what`."""
        return CommandFailed(f"could not write {what}: {e.strerror or e}; the newest checkpoint is {self._newest()}")

    def diverged(self, step, stats):
        """The TrainingDiverged error for a non-finite loss at `step`, naming the newest checkpoint."""
        return TrainingDiverged(f"loss became {stats['loss']} at step {step} (grad norm {stats['grad_norm']}); "
                                f"the newest checkpoint is {self._newest()}")

    def interrupted(self, e, step):
        """The same interrupt (KeyboardInterrupt or Terminated), saying where the run stopped;
        --resume is advised only when there is a checkpoint to resume from."""
        why = "terminated" if type(e).__name__ == "Terminated" else "interrupted"
        if self.last_checkpoint is None:
            return type(e)(f"{why} at step {step}, before the first checkpoint: nothing was kept "
                           f"(run the same command again to start over)")
        return type(e)(f"{why} at step {step}; the newest checkpoint is {self._newest()} "
                       f"(continue with --resume)")

    def plot_loss(self, title, keys=("loss", "mse", "vb"), final=False):
        """loss.png from log.jsonl (nothing to draw before the first log record). Drawn at the
        first call, then again once PLOT_EVERY_S seconds have passed, and always when `final` (the
        run's last step): a picture takes a quarter of a second, which a run that checkpoints every
        step would otherwise spend at every step. Returns the path, or None when nothing was drawn."""
        now = time.monotonic()
        if not final and self._plotted_at is not None and now - self._plotted_at < PLOT_EVERY_S:
            return None
        try:
            drawn = plot_loss_curve(self.log_path, self.path / "loss.png", title=title, keys=keys)
        except OSError as e:
            raise self.write_failed(e, self.path / "loss.png") from e
        if drawn is not None:
            self._plotted_at = now
        return drawn


PLOT_EVERY_S = 10.0  # the longest loss.png lags behind the log during a run


def check_resumable(meta, groups, path):
    """ValueError unless a checkpoint to resume from holds finite weights."""
    bad = non_finite(groups)
    if bad is not None:
        raise ValueError(f"--resume: {path} holds non-finite weights ({bad}); resume from an earlier checkpoint")


# What a resumed run must share with its checkpoint (another value is another run, which would
# not continue this one bit for bit): refused. The flags that only say how the run is watched or
# where it runs (and the seed, whose random state the checkpoint carries) are not compared; every
# other difference is named in one note.
RESUME_REFUSED = ("data", "num_images", "image_size", "vae", "objective", "optimizer")
RESUME_IGNORED = ("out", "resume", "overwrite", "no_progress", "device", "workers", "seed", "keep", "log_every",
                  "ckpt_every", "sample_every", "no_sample_grid", "eval_images", "scale_images")


def _same(key, old, new):
    if old == new:
        return True
    if key in ("data", "vae") and isinstance(old, str) and isinstance(new, str):
        if os.path.exists(old) and os.path.exists(new):
            return os.path.samefile(old, new)
        return old not in ("shapes", "mnist") and Path(old).name == Path(new).name and not os.path.exists(old)
    return False


def compare_resumed_args(saved, args, log=print):
    """Check a resumed run's arguments against those its checkpoint recorded (`saved`, a dict;
    older checkpoints may lack it): ValueError for a change that makes it another run (another
    dataset, image size or VAE), one note naming every other changed flag."""
    if not isinstance(saved, dict):
        return
    now = vars(args)
    changed = [(k, saved[k], now[k]) for k in now if k in saved and k not in RESUME_IGNORED
               and not _same(k, saved[k], now[k])]
    if now.get("lr_schedule", "constant") == "constant" and not now.get("warmup"):
        changed = [c for c in changed if c[0] != "steps"]  # a longer run is the usual reason to resume
    flag = lambda k: "--" + k.replace("_", "-")  # noqa: E731
    for k, old, new in changed:
        if k in RESUME_REFUSED:
            raise ValueError(f"--resume: the run was trained with {flag(k)} {old}, not {new}; continuing it "
                             f"with that change would be another run: start one with another --out")
    if changed:
        log("note: resuming with " + ", ".join(f"{flag(k)} {new} (the checkpoint's run: {old})" for k, old, new
                                              in changed)
            + "; the run goes on with the new values, so it will not match an uninterrupted run to the bit")


def add_run_arguments(ap, out, log_every=25, ckpt_every=500, required=False):
    """The flags of a run directory, the same on every training command."""
    ap.add_argument("--out", default=None if required else out, required=required,
                    help=f"run directory{'' if required else f' (default {out})'}")
    ap.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    ap.add_argument("--overwrite", action="store_true",
                    help="delete the run in --out (only the files a run writes) and start over")
    ap.add_argument("--log-every", type=int, default=log_every,
                    help="steps between log.jsonl records" + ("" if log_every else " (default: steps / 100)"))
    ap.add_argument("--ckpt-every", type=int, default=ckpt_every, help="steps between checkpoints")
    ap.add_argument("--keep", type=int, default=2, help="checkpoints to keep (the newest)")


def training_state(opt, rng, loader):
    """(meta entries, array groups) that make a run resume bit for bit: the optimiser's step and
    moments, the random generator's state, the data stream's epoch, position and order."""
    state = loader.state_dict()
    meta = {"rng": rng.get_state(), "opt_step": opt.step_count,
            "loader": {k: v for k, v in state.items() if k != "order"}}
    groups = {"opt_m": opt.m, "opt_v": opt.v}
    if state["order"] is not None:
        groups["loader"] = {"order": np.asarray(state["order"])}
    return meta, groups


def restore_training_state(meta, groups, opt, rng, loader):
    """Put back what training_state saved (the model's own weights are the caller's)."""
    opt.load_state_dict({"step": meta["opt_step"], "m": groups["opt_m"], "v": groups["opt_v"]})
    rng.set_state(meta["rng"])
    loader.load_state_dict({**meta["loader"], "order": groups.get("loader", {}).get("order")})
