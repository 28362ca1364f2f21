"""What the minidit commands share: an argument parser whose errors are one clear line."""
import argparse


class CommandParser(argparse.ArgumentParser):
    """argparse, but a bad argument prints `prog: error: message` on one line and exits with
    status 2, without the usage dump, so the message that names the problem is what a user sees."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")
