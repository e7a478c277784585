"""Thin entry points (``python -m launch.<name>``, or the ``rhm-*`` console scripts of an install)."""
from __future__ import annotations

import argparse
import logging
import sys

LOGGERS = ("rhm_jax", "launch")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: int = logging.INFO) -> None:
    """This package's loggers at ``level``; the root logger (jax, absl, orbax) at WARNING.

    A plain stderr handler that an imported library put on the root logger is replaced by ours
    (with a time stamp); other handlers (a notebook's, pytest's) are kept and receive this
    package's records by propagation.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler) is logging.StreamHandler and handler.stream in (sys.stderr, sys.__stderr__):
            root.removeHandler(handler)
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(handler)
    root.setLevel(logging.WARNING)
    for name in LOGGERS:
        logging.getLogger(name).setLevel(level)


def error_line(err: BaseException) -> str:
    """``error: <message on one line>`` for a launcher's stderr (the exception's type if it has no message)."""
    text = " ".join(str(err).split())
    return f"error: {text or type(err).__name__}"


def argument_parser(name: str, doc: str, overrides: bool = False) -> argparse.ArgumentParser:
    """The parser of ``python -m launch.<name>``: its docstring's first line, no abbreviated options
    (``--f`` must never mean ``--force``), and the override syntax in the help when it takes them."""
    epilog = "Overrides: --config.section.key=value (Python literals)." if overrides else None
    return argparse.ArgumentParser(prog=f"python -m launch.{name}", description=doc.splitlines()[0],
                                   epilog=epilog, allow_abbrev=False)
