"""`python -m minidit.pretrained`: sample the released DiT (minidit/pretrained/sample.py)."""
import sys

from ..cli import interrupted_on_import

with interrupted_on_import("python -m minidit.pretrained", __name__):
    from .sample import main

sys.exit(main())
