"""The export tests run against a real bdev layer: the ``layer`` fixture of tests/bdev."""

from tests.bdev.conftest import layer

__all__ = ["layer"]
