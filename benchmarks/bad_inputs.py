"""Bad values for every config key through the Python API's validation (no training): what each gets.

    python benchmarks/bad_inputs.py [--config sweeps/smoke.py] [--show accepted|traceback|unclear|all]

Each key of ``rhm_jax.keys.KEYS`` gets each kind of wrong value in ``KINDS`` (wrong type, negative,
zero, huge, None, string, float for an integer, ...), set as the command line would
(``--config.<key>=<value>`` through ``config.load``), then planned (``plan.make_plan``: every check
that runs before compilation). Each try ends in one of:

- ``one line``: a ValueError / TypeError whose message names the key (entry points print it as
  one line, ``launch.error_line``);
- ``unclear``: a ValueError / TypeError that does not name the key;
- ``traceback``: any other exception (what an entry point would print as a traceback);
- ``hang``: no answer within ``--timeout`` seconds;
- ``accepted``: no error. Some kinds are valid for some keys (2.5 for a float, 1e12 for
  ``train.num_steps``): ``--show accepted`` lists them to judge by hand.

Prints the counts, then the tries of the category asked for.
"""
from __future__ import annotations

import argparse
import collections
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from rhm_jax import config as config_lib  # noqa: E402
from rhm_jax import keys, plan  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The kinds of wrong value, as command-line literals.
KINDS = {"wrong type (list)": "[1, 2]", "negative": "-1", "zero": "0", "huge": "10**12", "None": "None",
         "string": "'abc'", "float for int": "2.5", "bool": "True", "nan": "float('nan')",
         "empty tuple": "()", "dict": "{'a': 1}", "negative float": "-0.5", "inf": "float('inf')",
         "huge negative": "-(10**12)", "empty string": "''", "nested": "((1,),)", "2**63": "2**63",
         "tiny": "1e-300"}


class Hang(Exception):
    """No answer within the time limit."""


def _alarm(signum, frame):
    raise Hang


def classify(spec: str, key: str, literal: str, timeout: float) -> tuple[str, str]:
    """(category, message) of one try."""
    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        config = config_lib.load(spec, [f"--config.{key}={literal}"])
        plan.make_plan(config, [{}])
    except Hang:
        return "hang", ""
    except (ValueError, TypeError) as err:
        text = " ".join(str(err).split())  # as launch.error_line prints it
        clear = key in text or key.split(".")[1] in text
        return ("one line" if clear else "unclear"), text[:160]
    except Exception as err:  # noqa: BLE001 - every other exception is what the sweep counts
        return "traceback", f"{type(err).__name__}: {str(err)[:120]}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return "accepted", ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.path.join(ROOT, "sweeps", "smoke.py"))
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds before a try counts as a hang")
    parser.add_argument("--show", default="traceback", choices=("accepted", "traceback", "unclear", "hang", "all"))
    args = parser.parse_args()
    counts: collections.Counter = collections.Counter()
    shown = []
    for key in keys.KEYS:
        for kind, literal in KINDS.items():
            category, message = classify(args.config, key, literal, args.timeout)
            counts[category] += 1
            if args.show in (category, "all"):
                shown.append(f"{category:>9}  {key}={literal} ({kind}): {message}")
    total = sum(counts.values())
    print(f"{total} tries ({len(keys.KEYS)} keys x {len(KINDS)} kinds) on {os.path.relpath(args.config, ROOT)}:")
    for category in ("one line", "unclear", "traceback", "hang", "accepted"):
        print(f"  {category:>9}: {counts[category]}")
    print("\n".join(shown))


if __name__ == "__main__":
    main()
