"""Packaging glue: the wheel carries the built-in task, suite, recipe and rig files.

The files users edit live at the top of the repository (``sim/``, ``policies/``, ``hardware/``),
the one copy in git. Building a wheel copies them into ``robolearn/_builtin/``, where
``robolearn.resources`` finds them once installed; a checkout or editable install reads the
top-level folders in place. Everything else is declared in pyproject.toml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
BUILTIN_FOLDERS = ("sim", "policies", "hardware")  # robolearn.resources.BUILTIN_FOLDERS


class BuildPyWithBuiltins(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:  # an editable install reads the folders in place
            return
        target = Path(self.build_lib) / "robolearn" / "_builtin"
        shutil.rmtree(target, ignore_errors=True)
        for folder in BUILTIN_FOLDERS:
            src = HERE / folder
            if src.is_dir():
                shutil.copytree(src, target / folder, ignore=shutil.ignore_patterns(".*", "__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildPyWithBuiltins})
