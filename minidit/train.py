"""`python -m minidit.train`: the DiT training command.
The code is in minidit/commands/train.py; this file only keeps the command short to type."""
import sys

from . import loading_command

with loading_command("python -m minidit.train", __name__):
    from .commands.train import main

if __name__ == "__main__":
    sys.exit(main())
