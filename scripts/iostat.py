#!/usr/bin/env python3
"""Per-bdev I/O statistics of a running target, with the options of SPDK's scripts/iostat.py."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.realpath(__file__)), ".."))

from pybdev.cli.iostat import script_main

if __name__ == "__main__":
    script_main()
