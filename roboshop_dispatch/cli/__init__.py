"""The ``dispatchctl`` command. Imports are lazy so ``dispatchctl --version`` starts fast."""

from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:] == ["--version"]:
        from .. import __version__

        print(f"dispatchctl {__version__}")
        return
    from .app import app

    app()
