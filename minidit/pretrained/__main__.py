"""`python -m minidit.pretrained`: sample the released DiT (minidit/pretrained/sample.py)."""
import sys

from .sample import main

sys.exit(main())
