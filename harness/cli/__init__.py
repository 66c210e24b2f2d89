"""The `harness` command line, one module per command group (run, tune, evaluation, results, regress,
world, build, listing, weights) on the typer app of ``harness/cli/common.py``.

Importing a group module adds its commands to ``app``; the order of the imports below is the order
`harness --help` lists them. Commands import their heavy modules inside the function, so
`harness --help` stays fast.
"""

from harness.cli import run, tune, evaluation, results, regress, world, build, listing, weights  # noqa: F401, I001
from harness.cli.common import app

__all__ = ["app"]
