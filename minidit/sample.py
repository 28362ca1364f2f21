"""`python -m minidit.sample`: the sampling command.
The code is in minidit/commands/sample.py; this file only keeps the command short to type."""
import sys

from . import loading_command

with loading_command("python -m minidit.sample", __name__):
    from .commands.sample import main

if __name__ == "__main__":
    sys.exit(main())
