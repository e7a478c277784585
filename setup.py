"""Build hook: the git revision of the checkout a wheel is built from, written into the wheel.

Everything else about the package is in pyproject.toml. ``build_py`` writes
``rhm_jax/_build_info.py`` (REVISION, DIRTY) into the build directory only, never into the source
tree, so an installed wheel can name the commit it was built from (``rhm_jax.rundir.provenance``).
Built outside a git checkout (an sdist, an exported tree) both are None.
"""
import os
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.realpath(__file__))


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", "-C", HERE, *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


class BuildWithRevision(build_py):
    def run(self):
        super().run()
        revision = None
        top = _git("rev-parse", "--show-toplevel")
        if top and os.path.realpath(top) == HERE:  # this tree's own checkout, not a clone around it
            revision = _git("rev-parse", "HEAD")
        status = _git("status", "--porcelain", "--untracked-files=no") if revision else None
        target = os.path.join(self.build_lib, "rhm_jax", "_build_info.py")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "w") as f:
            f.write('"""Written by setup.py at build time: the git checkout this package was built from."""\n'
                    f"REVISION = {revision!r}\nDIRTY = {None if status is None else bool(status)!r}\n")


setup(cmdclass={"build_py": BuildWithRevision})
