"""`python -m harness.cli` (as used by `accelerate launch` and `torchrun`)."""

import sys

from harness.cli import app

sys.exit(app())
