#!/usr/bin/env python3
"""Rebuild data/sample from the Debian package gcompris-qt-data.

Usage: .venv/bin/python scripts/build_sample.py [--out data/sample] [--deb FILE.deb] [--overwrite]
Without --deb it runs 'apt-get download gcompris-qt-data' (and 'apt-get update'
once if that fails), so it needs a Debian system with network access.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cast.data.sample import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
