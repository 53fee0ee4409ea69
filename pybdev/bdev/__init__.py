"""The bdev layer (core.py) and its modules, one file each."""
