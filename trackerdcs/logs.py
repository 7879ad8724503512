"""Logging set-up shared by every trackerdcs process: one line per event, on stderr."""

import logging
import sys


def setup_logging(verbose: bool = False, name: str | None = None) -> None:
    fmt = "%(asctime)s %(levelname)-7s " + (f"{name} " if name else "") + "%(name)s: %(message)s"
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format=fmt, stream=sys.stderr, force=True
    )
    logging.getLogger("paho").setLevel(logging.WARNING)
    logging.getLogger("transitions").setLevel(logging.WARNING)
