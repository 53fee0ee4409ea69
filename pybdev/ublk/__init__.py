"""ublk: export bdevs as /dev/ublkbN through the kernel's ublk driver over io_uring."""
