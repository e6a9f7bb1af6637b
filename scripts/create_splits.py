#!/usr/bin/env python
"""The training guide's split command; same flags as ``pivot split``.

Example:
    python scripts/create_splits.py --data-dir data/processed --train-ratio 0.7 --val-ratio 0.15 --test-ratio 0.15
"""

import sys

from pivot_monai.cli import main

if __name__ == "__main__":
    sys.exit(main(["split", *sys.argv[1:]]))
