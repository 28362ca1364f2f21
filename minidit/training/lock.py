"""The lock of a run folder (minidit.training.rundir): `.minidit.lock`, created exclusively and
holding the process id of the run that works in the folder, so that of two runs started at the
same instant on one folder exactly one runs. The lock of a process that no longer exists (after
a kill -9) is taken over.
"""
import json
import os
import socket
import time
from pathlib import Path

LOCK = ".minidit.lock"


def parse_owner(text):
    """(pid, host) recorded in a lock's text, or None when it is not a lock of ours."""
    try:
        d = json.loads(text)
        return int(d["pid"]), str(d["host"])
    except (ValueError, KeyError, TypeError):
        return None


def read_owner(lock, tries=10):
    """(text, owner) of a lock file; (None, None) when it is gone. A lock is written in one
    write right after its exclusive creation: an empty or unreadable text is read again for a
    moment before it counts as a broken (stale) lock."""
    for i in range(tries):
        try:
            text = Path(lock).read_text()
        except FileNotFoundError:
            return None, None
        except (OSError, UnicodeDecodeError):
            text = ""
        owner = parse_owner(text)
        if owner is not None or i == tries - 1:
            return text, owner
        time.sleep(0.02)
    return None, None


def is_alive(pid, host):
    if host != socket.gethostname():
        return True  # another machine's process: we cannot tell, so we assume it runs
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def in_use_error(folder, owner, lock):
    return FileExistsError(f"{folder} is in use by another run (process {owner[0]} on {owner[1]}); "
                           f"if no run is active there, delete {lock}")


def take_lock(folder):
    """Take the lock of a run folder: `.minidit.lock` created exclusively (O_CREAT | O_EXCL) and
    holding this process's id, so that of two runs started at the same instant exactly one gets
    it. A lock whose process no longer exists (after a kill -9) is taken over: it is first moved
    aside and checked to be the stale one, so a run that took the lock meanwhile keeps it.
    Raises FileExistsError naming the process that holds the folder."""
    folder = Path(folder)
    lock = folder / LOCK
    me = (os.getpid(), socket.gethostname())
    text = json.dumps({"pid": me[0], "host": me[1]})
    for _ in range(5):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            pass
        else:
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)
            return lock
        seen, owner = read_owner(lock)
        if seen is None:
            continue  # released meanwhile: try again
        if owner == me:
            return lock
        if owner is not None and is_alive(*owner):
            raise in_use_error(folder, owner, lock)
        aside = folder / f"{LOCK}.stale.{me[0]}"  # the stale lock, moved out of the way
        try:
            os.replace(lock, aside)
        except FileNotFoundError:
            continue
        try:
            moved = aside.read_text()
        except (OSError, UnicodeDecodeError):
            moved = ""
        if moved != seen:  # another run took the lock after we read the stale one: give it back
            try:
                os.link(aside, lock)
            except OSError:
                pass
        aside.unlink(missing_ok=True)
    seen, owner = read_owner(lock)
    if owner is not None:
        raise in_use_error(folder, owner, lock)
    raise FileExistsError(f"{folder}: could not take the lock {lock}; if no run is active there, delete it")


def release_lock(folder):
    """Delete the folder's lock if this process holds it."""
    lock = Path(folder) / LOCK
    _, owner = read_owner(lock, tries=1)
    if owner == (os.getpid(), socket.gethostname()):
        lock.unlink(missing_ok=True)
