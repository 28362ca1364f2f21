"""`python -m minidit.experiments`: the paper's section 5 experiments at teaching scale.
The code is in minidit/evaluation/experiments.py; this file only keeps the command short to type."""
import sys

from . import loading_command

with loading_command("python -m minidit.experiments", __name__):
    from .evaluation.experiments import main

if __name__ == "__main__":
    sys.exit(main())
