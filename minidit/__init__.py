"""minidit: Diffusion Transformers (Peebles & Xie, ICCV 2023) from scratch on NumPy/CuPy."""
__version__ = "0.1.0"


class loading_command:
    """Around the imports of a `python -m minidit.<command>` file (a fraction of a second while
    NumPy and the rest load): Ctrl-C there stops the command with one line and status 130
    instead of a traceback (nothing has been written yet, so the process simply ends). Nothing is
    imported here, so the guard starts at once."""

    def __init__(self, prog, module_name):
        self.prog, self.active = prog, module_name == "__main__"

    def __enter__(self):
        if self.active:
            import os
            import signal
            import sys

            line = f"{self.prog}: interrupted before it started; nothing was written\n".encode()

            def stop(signum, frame):  # exits at once: an exception raised inside NumPy's C imports
                try:                  # would come out as a long ImportError instead
                    sys.stderr.flush()
                except Exception:     # a signal can land while the main thread writes to stderr
                    pass
                try:
                    os.write(2, line)  # no buffer (and no lock) between this line and the terminal
                finally:
                    os._exit(130)
            self._previous = signal.signal(signal.SIGINT, stop)
        return self

    def __exit__(self, *exc):
        # The guard stays on until the command's own handling of Ctrl-C is in place:
        # minidit.cli.run_command ends it (end_loading_guard) inside its try block, so that no
        # moment between the imports and that block (building the parser, a lazy import whose
        # bytecode is compiled) shows a traceback. An import that failed ends it here.
        if self.active and exc[0] is not None:
            import signal
            signal.signal(signal.SIGINT, self._previous)
        elif self.active:
            _GUARD[:] = [self._previous]
        return False


_GUARD = []  # the SIGINT handler to put back once a command's own Ctrl-C handling starts


def end_loading_guard():
    """Put back the SIGINT handler that loading_command replaced (nothing when no guard is on)."""
    if _GUARD:
        import signal
        signal.signal(signal.SIGINT, _GUARD.pop())
