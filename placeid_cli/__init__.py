"""The ``placeid`` command-line tool: the top layer, over the library (placeid), the training job (training) and
the local tooling (placeid.local). Nothing below imports it."""

from placeid_cli.main import main

__all__ = ["main"]
