"""bdev commands, with the arguments and payloads of SPDK's ``rpc.py`` (spdk/cli/bdev.py).

Payload rules that clients rely on (SPDK's python/spdk/rpc/client.py): ``None`` values are
dropped by the client, ``False`` stays, so ``store_true`` flags are always sent; sizes given
in MB are turned into ``num_blocks`` here, exactly as SPDK's CLI computes them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from pybdev.cli.output import print_array, print_dict, print_json

MB = 1024 * 1024
IO_STAT_MODES = ["all", "maxmin", "error", "none"]


def _call(args: argparse.Namespace, method: str, **params: Any) -> Any:
    return args.client.call(method, params)


def _names(text: str) -> list[str]:
    return text.split(",")


# -- bdev layer ----------------------------------------------------------------------------

def bdev_set_options(a: argparse.Namespace) -> None:
    _call(a, "bdev_set_options", bdev_io_pool_size=a.bdev_io_pool_size,
          bdev_io_cache_size=a.bdev_io_cache_size, bdev_auto_examine=a.bdev_auto_examine,
          iobuf_small_cache_size=a.iobuf_small_cache_size,
          iobuf_large_cache_size=a.iobuf_large_cache_size)


def bdev_examine(a: argparse.Namespace) -> None:
    _call(a, "bdev_examine", name=a.name)


def bdev_wait_for_examine(a: argparse.Namespace) -> None:
    _call(a, "bdev_wait_for_examine")


def bdev_get_bdevs(a: argparse.Namespace) -> None:
    print_dict(_call(a, "bdev_get_bdevs", name=a.name, timeout=a.timeout))


def bdev_get_iostat(a: argparse.Namespace) -> None:
    print_dict(_call(a, "bdev_get_iostat", name=a.name, per_channel=a.per_channel,
                     reset_mode=a.reset_mode, names=a.names))


def bdev_set_qd_sampling_period(a: argparse.Namespace) -> None:
    _call(a, "bdev_set_qd_sampling_period", name=a.name, period=a.period)


def bdev_reset_iostat(a: argparse.Namespace) -> None:
    _call(a, "bdev_reset_iostat", name=a.name, mode=a.mode)


def bdev_set_qos_limit(a: argparse.Namespace) -> None:
    _call(a, "bdev_set_qos_limit", name=a.name, rw_ios_per_sec=a.rw_ios_per_sec,
          rw_mbytes_per_sec=a.rw_mbytes_per_sec, r_mbytes_per_sec=a.r_mbytes_per_sec,
          w_mbytes_per_sec=a.w_mbytes_per_sec)


def bdev_enable_histogram(a: argparse.Namespace) -> None:
    _call(a, "bdev_enable_histogram", name=a.name, enable=a.enable, opc=a.opc,
          granularity=a.granularity, min_nsec=a.min_nsec, max_nsec=a.max_nsec)


def bdev_get_histogram(a: argparse.Namespace) -> None:
    print_dict(_call(a, "bdev_get_histogram", name=a.name))


def bdev_get_histogram_borders(a: argparse.Namespace) -> None:
    print_dict(_call(a, "bdev_get_histogram_borders", name=a.name,
                     borders=[int(b) for b in a.borders]))


# -- malloc ---------------------------------------------------------------------------------

def bdev_malloc_create(a: argparse.Namespace) -> None:
    num_blocks = (a.total_size * MB) // a.block_size
    print_json(_call(a, "bdev_malloc_create", num_blocks=int(num_blocks),
                     block_size=a.block_size, physical_block_size=a.physical_block_size,
                     name=a.name, uuid=a.uuid, optimal_io_boundary=a.optimal_io_boundary,
                     md_size=a.md_size, md_interleave=a.md_interleave, dif_type=a.dif_type,
                     dif_is_head_of_md=a.dif_is_head_of_md, dif_pi_format=a.dif_pi_format,
                     numa_id=a.numa_id))


def bdev_malloc_delete(a: argparse.Namespace) -> None:
    _call(a, "bdev_malloc_delete", name=a.name)


# -- null -----------------------------------------------------------------------------------

def bdev_null_create(a: argparse.Namespace) -> None:
    if a.dif_type and not a.md_size:
        print("ERROR: --md-size must be > 0 when --dif-type is > 0")
        sys.exit(1)
    print_json(_call(a, "bdev_null_create", num_blocks=(a.total_size * MB) // a.block_size,
                     block_size=a.block_size, physical_block_size=a.physical_block_size,
                     name=a.name, uuid=a.uuid, md_size=a.md_size, dif_type=a.dif_type,
                     dif_is_head_of_md=a.dif_is_head_of_md, dif_pi_format=a.dif_pi_format,
                     preferred_write_alignment=a.preferred_write_alignment,
                     preferred_write_granularity=a.preferred_write_granularity,
                     optimal_write_size=a.optimal_write_size,
                     preferred_unmap_alignment=a.preferred_unmap_alignment,
                     preferred_unmap_granularity=a.preferred_unmap_granularity))


def bdev_null_delete(a: argparse.Namespace) -> None:
    _call(a, "bdev_null_delete", name=a.name)


def bdev_null_resize(a: argparse.Namespace) -> None:
    print_json(_call(a, "bdev_null_resize", name=a.name, new_size=a.new_size))


# -- aio ------------------------------------------------------------------------------------

def bdev_aio_create(a: argparse.Namespace) -> None:
    print_json(_call(a, "bdev_aio_create", filename=a.filename, name=a.name,
                     block_size=a.block_size, readonly=a.readonly, fallocate=a.fallocate,
                     uuid=a.uuid, nowait=a.nowait))


def bdev_aio_rescan(a: argparse.Namespace) -> None:
    print_json(_call(a, "bdev_aio_rescan", name=a.name))


def bdev_aio_delete(a: argparse.Namespace) -> None:
    _call(a, "bdev_aio_delete", name=a.name)


# -- passthru -------------------------------------------------------------------------------

def bdev_passthru_create(a: argparse.Namespace) -> None:
    print_json(_call(a, "bdev_passthru_create", base_bdev_name=a.base_bdev_name, name=a.name,
                     uuid=a.uuid))


def bdev_passthru_delete(a: argparse.Namespace) -> None:
    _call(a, "bdev_passthru_delete", name=a.name)


# -- error ----------------------------------------------------------------------------------

def bdev_error_create(a: argparse.Namespace) -> None:
    print_json(_call(a, "bdev_error_create", base_name=a.base_name, uuid=a.uuid))


def bdev_error_delete(a: argparse.Namespace) -> None:
    _call(a, "bdev_error_delete", name=a.name)


def bdev_error_inject_error(a: argparse.Namespace) -> None:
    _call(a, "bdev_error_inject_error", name=a.name, io_type=a.io_type,
          error_type=a.error_type, nvme_sct=a.nvme_sct, nvme_sc=a.nvme_sc, num=a.num,
          queue_depth=a.queue_depth, corrupt_offset=a.corrupt_offset,
          corrupt_value=a.corrupt_value)


def bdev_error_resume_pending(a: argparse.Namespace) -> None:
    _call(a, "bdev_error_resume_pending", name=a.name)


# -- delay ----------------------------------------------------------------------------------

def bdev_delay_create(a: argparse.Namespace) -> None:
    print_json(_call(a, "bdev_delay_create", base_bdev_name=a.base_bdev_name, name=a.name,
                     uuid=a.uuid, avg_read_latency=a.avg_read_latency,
                     p99_read_latency=a.p99_read_latency, avg_write_latency=a.avg_write_latency,
                     p99_write_latency=a.p99_write_latency))


def bdev_delay_delete(a: argparse.Namespace) -> None:
    _call(a, "bdev_delay_delete", name=a.name)


def bdev_delay_update_latency(a: argparse.Namespace) -> None:
    print_json(_call(a, "bdev_delay_update_latency", delay_bdev_name=a.delay_bdev_name,
                     latency_type=a.latency_type, latency_us=a.latency_us))


# -- split ----------------------------------------------------------------------------------

def bdev_split_create(a: argparse.Namespace) -> None:
    print_array(_call(a, "bdev_split_create", base_bdev=a.base_bdev, split_count=a.split_count,
                      split_size_mb=a.split_size_mb))


def bdev_split_delete(a: argparse.Namespace) -> None:
    _call(a, "bdev_split_delete", base_bdev=a.base_bdev)


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    def cmd(name: str, func: Callable[[argparse.Namespace], None],
            help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.set_defaults(func=func)
        return p

    p = cmd("bdev_set_options", bdev_set_options, "Set options of the bdev subsystem")
    p.add_argument("-p", "--bdev-io-pool-size", type=int,
                   help="number of bdev_io structures in the shared pool")
    p.add_argument("-c", "--bdev-io-cache-size", type=int,
                   help="maximum number of bdev_io structures cached per thread")
    p.add_argument("--auto-examine", dest="bdev_auto_examine",
                   action=argparse.BooleanOptionalAction, help="enable or disable auto examine")
    p.add_argument("--iobuf-small-cache-size", type=int,
                   help="size of the small iobuf per-thread cache")
    p.add_argument("--iobuf-large-cache-size", type=int,
                   help="size of the large iobuf per-thread cache")

    p = cmd("bdev_examine", bdev_examine,
            "Examine a bdev if it exists, or once it is created (auto examine off)")
    p.add_argument("-b", "--name", required=True, help="name or alias of the bdev")

    cmd("bdev_wait_for_examine", bdev_wait_for_examine,
        "Return once all bdevs have been examined")

    p = cmd("bdev_get_bdevs", bdev_get_bdevs, "List bdevs, or one bdev")
    p.add_argument("-b", "--name", help="name or alias of the bdev, e.g. Malloc0")
    p.add_argument("-t", "--timeout-ms", dest="timeout", type=int,
                   help="with -b: milliseconds to wait for the bdev to appear (default 0)")

    p = cmd("bdev_get_iostat", bdev_get_iostat, "I/O statistics of all or some bdevs")
    # -b is the form of SPDK's rpc.py before v26.05 (it sends "name", which pybdev accepts).
    p.add_argument("-b", "--name", help="one bdev name (older form of --names)")
    p.add_argument("-c", "--per-channel", dest="per_channel", action="store_true",
                   default=False, help="per-channel statistics of one bdev")
    p.add_argument("--reset-mode", choices=IO_STAT_MODES,
                   help="what to reset after reading the statistics")
    p.add_argument("--names", type=_names, help="comma-separated bdev names")

    p = cmd("bdev_reset_iostat", bdev_reset_iostat, "Reset I/O statistics")
    p.add_argument("-b", "--name", help="name of the bdev, e.g. Malloc0")
    p.add_argument("-m", "--mode", choices=IO_STAT_MODES, help="what to reset")

    p = cmd("bdev_set_qd_sampling_period", bdev_set_qd_sampling_period,
            "Enable or disable tracking of a bdev's queue depth")
    p.add_argument("name", help="name of the bdev, e.g. Malloc0")
    p.add_argument("period", type=int,
                   help="queue depth sampling period in microseconds; 0 disables it")

    p = cmd("bdev_set_qos_limit", bdev_set_qos_limit, "Set QoS rate limits on a bdev")
    p.add_argument("name", help="name of the bdev, e.g. Malloc0")
    p.add_argument("--rw-ios-per-sec", type=int,
                   help="read and write I/Os per second (a multiple of 1000); 0: unlimited")
    for kind, what in (("rw", "read and write"), ("r", "read"), ("w", "write")):
        p.add_argument(f"--{kind}-mbytes-per-sec", type=int,
                       help=f"{what} MiB per second; 0: unlimited")

    p = cmd("bdev_enable_histogram", bdev_enable_histogram,
            "Enable or disable the latency histogram of a bdev")
    p.add_argument("--histogram", dest="enable", action=argparse.BooleanOptionalAction,
                   required=True, help="enable or disable the histogram")
    p.add_argument("-o", "--opc", help="count only this I/O type (default: all)")
    p.add_argument("--granularity", type=int, help="buckets per power of two: 2^N (default 7)")
    p.add_argument("--min-nsec", type=int, help="smallest latency kept apart (default 1000)")
    p.add_argument("--max-nsec", type=int, help="largest latency kept apart (default 120 s)")
    p.add_argument("name", help="name of the bdev")

    p = cmd("bdev_get_histogram", bdev_get_histogram, "Get the latency histogram of a bdev")
    p.add_argument("name", help="name of the bdev")

    p = cmd("bdev_get_histogram_borders", bdev_get_histogram_borders,
            "Latency counts of a bdev at or below each border")
    p.add_argument("name", help="name of the bdev")
    p.add_argument("--borders", type=_names, required=True,
                   help="comma-separated borders in microseconds, ascending")

    p = cmd("bdev_malloc_create", bdev_malloc_create, "Create a bdev in RAM")
    p.add_argument("-b", "--name", help="name of the bdev (default MallocN)")
    p.add_argument("-u", "--uuid", help="UUID of the bdev")
    p.add_argument("total_size", type=float, help="size in MB (float > 0)")
    p.add_argument("block_size", type=int, help="data block size")
    p.add_argument("-p", "--physical-block-size", type=int, help="physical block size")
    p.add_argument("-o", "--optimal-io-boundary", type=int,
                   help="split on this boundary, in blocks (default 0: off)")
    p.add_argument("-m", "--md-size", type=int,
                   help="metadata size (0, 8, 16, 32, 64 or 128; default 0)")
    p.add_argument("-i", "--md-interleave", action="store_true",
                   help="interleave metadata with data")
    p.add_argument("-t", "--dif-type", type=int, choices=[0, 1, 2, 3],
                   help="protection information type (default 0: none)")
    p.add_argument("-d", "--dif-is-head-of-md", action="store_true",
                   help="protection information is in the first 8 bytes of metadata")
    p.add_argument("-f", "--dif-pi-format", type=int, choices=[0, 1, 2],
                   help="protection information format: 16b, 32b or 64b guard")
    p.add_argument("-n", "--numa-id", type=int, help="NUMA node of the memory (default -1)")

    p = cmd("bdev_malloc_delete", bdev_malloc_delete, "Delete a malloc bdev")
    p.add_argument("name", help="malloc bdev name")

    p = cmd("bdev_null_create", bdev_null_create, "Create a null bdev")
    p.add_argument("name", help="bdev name")
    p.add_argument("-u", "--uuid", help="UUID of the bdev")
    p.add_argument("total_size", type=int, help="size in MB (int > 0), data blocks only")
    p.add_argument("block_size", type=int, help="data block size")
    p.add_argument("-p", "--physical-block-size", type=int, help="physical block size")
    p.add_argument("-m", "--md-size", type=int, help="metadata size (default 0)")
    p.add_argument("-t", "--dif-type", type=int, choices=[0, 1, 2, 3],
                   help="protection information type (default 0: none)")
    p.add_argument("-d", "--dif-is-head-of-md", action="store_true",
                   help="protection information is in the first 8 bytes of metadata")
    p.add_argument("-f", "--dif-pi-format", type=int, choices=[0, 1, 2],
                   help="protection information format: 16b, 32b or 64b guard")
    p.add_argument("-a", "--preferred-write-alignment", type=int,
                   help="preferred write alignment in blocks")
    p.add_argument("-g", "--preferred-write-granularity", type=int,
                   help="preferred write granularity in blocks")
    p.add_argument("-s", "--optimal-write-size", type=int, help="optimal write size in blocks")
    p.add_argument("-c", "--preferred-unmap-alignment", type=int,
                   help="preferred unmap alignment in blocks")
    p.add_argument("-r", "--preferred-unmap-granularity", type=int,
                   help="preferred unmap granularity in blocks")

    p = cmd("bdev_null_delete", bdev_null_delete, "Delete a null bdev")
    p.add_argument("name", help="null bdev name")

    p = cmd("bdev_null_resize", bdev_null_resize, "Grow a null bdev")
    p.add_argument("name", help="null bdev name")
    p.add_argument("new_size", type=int, help="new size in MiB")

    p = cmd("bdev_aio_create", bdev_aio_create, "Create a bdev on a file or block device")
    p.add_argument("filename", help="path of the file or device, e.g. /dev/sda")
    p.add_argument("name", help="bdev name")
    p.add_argument("block_size", type=int, nargs="?", help="block size (detected for devices)")
    p.add_argument("-r", "--readonly", action="store_true", help="make the bdev read-only")
    p.add_argument("--fallocate", action="store_true",
                   help="support unmap and write_zeroes through fallocate")
    p.add_argument("-u", "--uuid", help="UUID of the bdev")
    p.add_argument("--no-wait", dest="nowait", action="store_true",
                   help="RWF_NOWAIT for block devices (creation fails for anything else)")

    p = cmd("bdev_aio_rescan", bdev_aio_rescan, "Pick up a new size of an aio bdev's file")
    p.add_argument("name", help="bdev name")

    p = cmd("bdev_aio_delete", bdev_aio_delete, "Delete an aio bdev")
    p.add_argument("name", help="aio bdev name")

    p = cmd("bdev_error_create", bdev_error_create,
            "Create an error injection bdev EE_<base> on a base bdev")
    p.add_argument("base_name", help="base bdev name")
    p.add_argument("--uuid", help="UUID of the error bdev")

    p = cmd("bdev_error_delete", bdev_error_delete, "Delete an error injection bdev")
    p.add_argument("name", help="error bdev name, e.g. EE_Malloc0")

    p = cmd("bdev_passthru_create", bdev_passthru_create,
            "Create a pass-through bdev on a bdev (now or when it appears)")
    p.add_argument("-b", "--base-bdev-name", required=True, help="name of the base bdev")
    p.add_argument("-p", "--name", required=True, help="name of the pass-through bdev")
    p.add_argument("-u", "--uuid", help="UUID of the bdev")

    p = cmd("bdev_passthru_delete", bdev_passthru_delete, "Delete a pass-through bdev")
    p.add_argument("name", help="pass-through bdev name")

    p = cmd("bdev_error_inject_error", bdev_error_inject_error,
            "Inject errors into the next requests of an error bdev")
    p.add_argument("name", help="error bdev name")
    p.add_argument("io_type", choices=["clear", "read", "write", "unmap", "flush", "all"],
                   help="I/O type")
    p.add_argument("error_type",
                   choices=["failure", "nvme_failure", "pending", "corrupt_data", "nomem"],
                   help="error type")
    p.add_argument("--nvme-sct", type=int, help="NVMe SCT for nvme_failure (default 0)")
    p.add_argument("--nvme-sc", type=int, help="NVMe SC for nvme_failure (default 0)")
    p.add_argument("-n", "--num", type=int, help="number of requests to fail (default 1)")
    p.add_argument("-q", "--queue-depth", type=int,
                   help="inject only while this many requests are in flight")
    p.add_argument("-o", "--corrupt-offset", type=int,
                   help="byte offset to XOR with the corrupt value")
    p.add_argument("-v", "--corrupt-value", type=int, help="XOR value (1-255)")

    p = cmd("bdev_error_resume_pending", bdev_error_resume_pending,
            "Resume the requests an error bdev holds")
    p.add_argument("name", help="error bdev name")

    p = cmd("bdev_delay_create", bdev_delay_create, "Add a delay bdev on existing bdev")
    p.add_argument("-b", "--base-bdev-name", required=True, help="name of the existing bdev")
    p.add_argument("-d", "--name", required=True, help="name of the delay bdev")
    p.add_argument("-u", "--uuid", help="UUID of the bdev (optional)")
    p.add_argument("-r", "--avg-read-latency", type=int, required=True,
                   help="average latency to apply before completing read ops (microseconds)")
    p.add_argument("-t", "--nine-nine-read-latency", dest="p99_read_latency", type=int,
                   required=True, help="latency to apply to 1 in 100 read ops (microseconds)")
    p.add_argument("-w", "--avg-write-latency", type=int, required=True,
                   help="average latency to apply before completing write ops (microseconds)")
    p.add_argument("-n", "--nine-nine-write-latency", dest="p99_write_latency", type=int,
                   required=True, help="latency to apply to 1 in 100 write ops (microseconds)")

    p = cmd("bdev_delay_delete", bdev_delay_delete, "Delete a delay bdev")
    p.add_argument("name", help="delay bdev name")

    p = cmd("bdev_delay_update_latency", bdev_delay_update_latency,
            "Update one of the latency values for a given delay bdev")
    p.add_argument("delay_bdev_name", help="the name of the given delay bdev")
    p.add_argument("latency_type", choices=["avg_read", "avg_write", "p99_read", "p99_write"],
                   help="latency bucket to update")
    p.add_argument("latency_us", type=int, help="new latency value in microseconds")

    p = cmd("bdev_split_create", bdev_split_create,
            "Split a bdev into equal parts (now, or when it appears)")
    p.add_argument("base_bdev", help="base bdev name")
    p.add_argument("-s", "--split-size-mb", type=int, help="size in MiB for each bdev")
    p.add_argument("split_count", type=int,
                   help="number of split bdevs to create (clamped to what fits)")

    p = cmd("bdev_split_delete", bdev_split_delete, "Delete split config with all created splits")
    p.add_argument("base_bdev", help="base bdev name")
