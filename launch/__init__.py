"""Thin entry points (``python -m launch.<name>``, or the ``rhm-*`` console scripts of an install)."""
from __future__ import annotations

import argparse
import difflib
import logging
import os
import sys
import warnings

LOGGERS = ("rhm_jax", "launch")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def quiet_closed_loops() -> None:
    """Drop the 'Event loop is closed' tracebacks that tensorstore's I/O threads raise, through
    sys.excepthook or as unraisable exceptions (sys.unraisablehook), after orbax has given up on a
    failed write or a damaged checkpoint was read, and the 'coroutine ... was never awaited' warning
    that orbax's abandoned reads leave at exit: the entry point reports the failure itself."""
    warnings.filterwarnings("ignore", message=r"coroutine '.*' was never awaited", category=RuntimeWarning)
    previous = sys.excepthook
    if getattr(previous, "quiet_closed_loops", False):
        return

    def hook(kind: type, value: BaseException, tb: object) -> None:
        if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
            return
        previous(kind, value, tb)

    def unraisable(info: object) -> None:
        value = getattr(info, "exc_value", None)
        if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
            return
        previous_unraisable(info)

    previous_unraisable = sys.unraisablehook
    hook.quiet_closed_loops = True
    sys.excepthook = hook
    sys.unraisablehook = unraisable


def setup_logging(level: int = logging.INFO) -> None:
    """An entry point's process set-up: this package's loggers at ``level``; the root logger (jax,
    absl, orbax) at WARNING; tensorstore's closed-loop tracebacks dropped (``quiet_closed_loops``).

    A plain stderr handler that an imported library put on the root logger is replaced by ours
    (with a time stamp); other handlers (a notebook's, pytest's) are kept and receive this
    package's records by propagation.
    """
    quiet_closed_loops()
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


def program_name(name: str) -> str:
    """How the user called entry point ``name``: ``rhm-run`` (a console script) or ``python -m launch.<name>``."""
    called = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return called if called.startswith("rhm-") else f"python -m launch.{name}"


class Parser(argparse.ArgumentParser):
    """An entry point's parser: no abbreviated options (``--f`` must never mean ``--force``), and
    ``parse`` that takes config overrides in both config_flags forms (``--config.a.b=1`` and
    ``--config.a.b 1``) where the entry point accepts them, and names any other unknown option."""

    def __init__(self, *args, overrides: bool = False, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)
        self.overrides = overrides

    def parse(self, argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
        """(options, overrides as ``--config.key=value``); an unknown option exits 2 with a suggestion."""
        args, rest = self.parse_known_args(argv)
        overrides, i = [], 0
        while i < len(rest):
            item = rest[i]
            if self.overrides and item.startswith("--config.") and "=" not in item:
                if i + 1 == len(rest) or rest[i + 1].startswith("--"):
                    self.error(f"override {item} has no value: write {item}=VALUE or {item} VALUE")
                overrides.append(f"{item}={rest[i + 1]}")
                i += 2
                continue
            if not (self.overrides and item.startswith("--config.")):
                self.error(self._unknown(item))
            overrides.append(item)
            i += 1
        return args, overrides

    def _unknown(self, item: str) -> str:
        """'unknown option ...' with the nearest known option, or why a word is out of place."""
        if not item.startswith("-"):
            return f"unexpected argument {item!r} (options take the form --name VALUE)"
        name = item.partition("=")[0]
        if name.startswith("--config.") and not self.overrides:
            return f"unknown option {name}: {self.prog} takes no config overrides"
        known = [o for o in self._option_string_actions if o.startswith("--")]
        spelled = {o.replace("-", "_"): o for o in known}
        near = spelled.get(name.replace("-", "_")) or next(iter(difflib.get_close_matches(name, known, 1, 0.6)), None)
        hint = f"; did you mean {near}?" if near else f"; options: {', '.join(sorted(known))}"
        return f"unknown option {name}{hint}"


def argument_parser(name: str, doc: str, overrides: bool = False) -> Parser:
    """The parser of entry point ``name`` (its usage names the command as called: ``rhm-run`` or
    ``python -m launch.local``): its docstring's first line, no abbreviated options, and the
    override syntax in the help when it takes them."""
    epilog = "Overrides: --config.section.key=value or --config.section.key value (Python literals)." \
        if overrides else None
    return Parser(prog=program_name(name), description=doc.splitlines()[0], epilog=epilog, overrides=overrides)


def require(module: str, extra: str, command: str):
    """The optional dependency ``module`` imported, or one line naming the extra to install and exit 2."""
    try:
        return __import__(module)
    except ImportError:
        print(f"error: {command} needs {module}, an optional dependency: pip install 'rhm_jax[{extra}]'"
              f" (or pip install {module})", file=sys.stderr)
        raise SystemExit(2) from None
