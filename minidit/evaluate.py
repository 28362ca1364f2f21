"""`python -m minidit.evaluate`: the evaluation command (train the classifier, score samples).
The code is in minidit/evaluation/evaluate.py; this file only keeps the command short to type."""
import sys

from . import loading_command

with loading_command("python -m minidit.evaluate", __name__):
    from .evaluation.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
