#!/usr/bin/env python
"""The training guide's preprocessing command; same flags as ``pivot preprocess``.

Example:
    python scripts/preprocess_data.py --input-dir data/raw --output-dir data/processed \
        --config bundle/configs/train.yaml
"""

import sys

from pivot_monai.cli import main

if __name__ == "__main__":
    sys.exit(main(["preprocess", *sys.argv[1:]]))
