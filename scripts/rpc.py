#!/usr/bin/env python3
"""pybdev's RPC command line, argument-compatible with SPDK's scripts/rpc.py."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.realpath(__file__)), ".."))

from pybdev.cli import script_main

if __name__ == "__main__":
    script_main()
