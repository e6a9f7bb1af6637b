"""``python -m pivot_monai.cli <command> ...``: the ``pivot`` command as a module."""

from __future__ import annotations

import sys

from pivot_monai.cli import main

if __name__ == "__main__":
    sys.exit(main())
