"""`python -m minidit.pretrained`: sample the released DiT (minidit/pretrained/sample.py)."""
import sys

from .. import loading_command

with loading_command("python -m minidit.pretrained", __name__):
    from .sample import main

sys.exit(main())
