"""Protection information: pybdev/bdev/dif.py, and malloc and null bdevs with metadata and DIF.

The PI rules are SPDK's lib/util/dif.c; the bdev behaviour SPDK's module/bdev/malloc and
module/bdev/null (checked on write and read, -EIO on a mismatch, formatted blocks with an
application tag of 0xFFFF). The RPC part runs SPDK's test/bdev/blockdev.sh and
test/nvmf/target/dif.sh creates through SPDK's own client and scripts/rpc.py.
"""

from __future__ import annotations

import errno
import json
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pybdev.bdev import dif
from pybdev.bdev.core import BdevLayer, Descriptor
from pybdev.bdev.malloc import MallocBdev, MallocDifBdev, MallocModule
from pybdev.bdev.null import NullBdev, NullDifBdev, NullModule
from pybdev.bdev.passthru import PassthruModule
from pybdev.bdev.split import SplitModule
from pybdev.errors import OperationError
from pybdev.export.base import refuse_interleaved_md
from pybdev.ublk.target import device_params
from tests.conftest import Target

from .conftest import complete, module, names, rpc_error

# ---------------------------------------------------------------------------- dif.py


def test_crc_check_values() -> None:
    # The catalogue's check values (CRC of b"123456789") of the three guard CRCs.
    assert dif.crc16_t10dif(b"123456789") == 0xD0DB
    assert dif.crc64_nvme(b"123456789") == 0xAE8B14860A799888
    assert dif._GUARD[dif.PI_FORMAT_32](b"123456789", 0) == 0xE3069283
    for fn in (dif.crc16_t10dif, dif.crc64_nvme):  # a previous result continues the CRC
        assert fn(b"6789", fn(b"12345")) == fn(b"123456789")


FORMATS = [  # data block size, md size, interleaved, head of md, PI format
    (512, 8, True, False, dif.PI_FORMAT_16),
    (512, 16, True, False, dif.PI_FORMAT_16),
    (512, 16, True, True, dif.PI_FORMAT_16),
    (512, 16, False, False, dif.PI_FORMAT_16),
    (512, 8, False, True, dif.PI_FORMAT_16),
    (4096, 16, True, False, dif.PI_FORMAT_32),
    (4096, 64, False, False, dif.PI_FORMAT_32),
    (4096, 16, True, True, dif.PI_FORMAT_64),
    (4096, 32, False, False, dif.PI_FORMAT_64),
]


def make(bs: int, ms: int, inter: bool, head: bool, fmt: int, dif_type: int = 1,
         n: int = 3, ref: int = 7) -> tuple[dif.DifContext, bytearray, bytearray | None]:
    """A context and ``n`` blocks of patterned data (and metadata) with generated PI."""
    ctx = dif.DifContext(bs + ms if inter else bs, ms, inter, head, dif_type,
                         dif.check_flags(dif_type), pi_format=fmt)
    unit = ctx.block_size
    data = bytearray((i * 31 + 7) & 0xFF for i in range(unit * n))
    md = None if inter else bytearray((i * 13 + 1) & 0xFF for i in range(ms * n))
    dif.generate(ctx, memoryview(data), n, None if md is None else memoryview(md),
                 init_ref_tag=ref)
    return ctx, data, md


def pi_at(ctx: dif.DifContext, data: bytearray, md: bytearray | None, block: int) -> int:
    if md is None:
        return block * ctx.block_size + ctx.guard_interval
    return block * ctx.md_size + ctx.guard_interval


@pytest.mark.parametrize("fmt", FORMATS)
def test_generate_verify_and_each_failure(fmt: tuple[int, int, bool, bool, int]) -> None:
    ctx, data, md = make(*fmt)
    buf = data if md is None else md
    mdv = None if md is None else memoryview(md)
    assert dif.verify(ctx, memoryview(data), 3, mdv, init_ref_tag=7) is None
    # Reference tag: the LBA of each block (type 1).
    got = dif.verify(ctx, memoryview(data), 3, mdv, init_ref_tag=8)
    assert got is not None and (got.err_type, got.offset_blocks) == (dif.ERR_REFTAG, 0)
    assert (got.expected, got.actual) == (8, 7)
    # A flipped data bit in block 2 is a guard error there.
    data[2 * ctx.block_size + 5] ^= 0x10
    got = dif.verify(ctx, memoryview(data), 3, mdv, init_ref_tag=7)
    assert got is not None and (got.err_type, got.offset_blocks) == (dif.ERR_GUARD, 2)
    data[2 * ctx.block_size + 5] ^= 0x10
    # Guard field itself corrupted in block 1.
    buf[pi_at(ctx, data, md, 1)] ^= 0x01
    got = dif.verify(ctx, memoryview(data), 3, mdv, init_ref_tag=7)
    assert got is not None and (got.err_type, got.offset_blocks) == (dif.ERR_GUARD, 1)
    # An application tag of 0xFFFF turns every check of that block off (types 1 and 2).
    at = pi_at(ctx, data, md, 1) + (2 if fmt[4] == dif.PI_FORMAT_16 else
                                     4 if fmt[4] == dif.PI_FORMAT_32 else 8)
    buf[at:at + 2] = b"\xff\xff"
    assert dif.verify(ctx, memoryview(data), 3, mdv, init_ref_tag=7) is None


def test_layouts_match_spdk_struct_spdk_dif() -> None:
    # 16b guard: guard@0 (2), app@2, ref@4 (4); PI at the end of the metadata by default.
    _, data, _ = make(512, 8, True, False, dif.PI_FORMAT_16, n=1, ref=0x01020304)
    guard, app, ref = struct.unpack(">HHI", data[512:520])
    assert (guard, app, ref) == (dif.crc16_t10dif(bytes(data[:512])), 0, 0x01020304)
    # Head of a 16-byte metadata area: the guard covers only the data.
    _, data, _ = make(512, 16, True, True, dif.PI_FORMAT_16, n=1)
    assert struct.unpack(">H", data[512:514])[0] == dif.crc16_t10dif(bytes(data[:512]))
    # Tail of it: the guard covers data and the first 8 metadata bytes.
    _, data, _ = make(512, 16, True, False, dif.PI_FORMAT_16, n=1)
    assert struct.unpack(">H", data[520:522])[0] == dif.crc16_t10dif(bytes(data[:520]))
    # 32b guard: CRC32C, app@4, ref@8 (8 bytes). 64b guard: CRC64, app@8, ref 48 bits @10.
    _, data, _ = make(4096, 16, True, True, dif.PI_FORMAT_32, n=1, ref=5)
    assert struct.unpack(">IHHQ", data[4096:4112]) == (
        dif._GUARD[dif.PI_FORMAT_32](bytes(data[:4096]), 0), 0, 0, 5)
    _, data, _ = make(4096, 16, True, True, dif.PI_FORMAT_64, n=1, ref=5)
    assert struct.unpack(">QHHI", data[4096:4112]) == (
        dif.crc64_nvme(bytes(data[:4096])), 0, 0, 5)
    # DIX: the guard runs over the data block, then the metadata before the PI.
    _ctx, data, md = make(512, 16, False, False, dif.PI_FORMAT_16, n=1)
    assert md is not None
    assert struct.unpack(">H", md[8:10])[0] == dif.crc16_t10dif(bytes(md[:8]),
                                                                 dif.crc16_t10dif(bytes(data)))


def test_type3_ignores_the_reference_tag_and_needs_both_tags_to_escape() -> None:
    ctx, data, _ = make(512, 8, True, False, dif.PI_FORMAT_16, dif_type=3)
    assert struct.unpack(">I", data[516:520])[0] == 0  # type 3 checks no reftag: none kept
    assert dif.verify(ctx, memoryview(data), 3, init_ref_tag=1234) is None
    data[0] ^= 1
    data[514:516] = b"\xff\xff"  # app tag alone is no escape for type 3
    got = dif.verify(ctx, memoryview(data), 3)
    assert got is not None and got.err_type == dif.ERR_GUARD
    data[516:520] = b"\xff\xff\xff\xff"
    assert dif.verify(ctx, memoryview(data), 3) is None


def test_apptag_check_when_asked() -> None:
    flags = dif.FLAGS_GUARD_CHECK | dif.FLAGS_APPTAG_CHECK
    ctx = dif.DifContext(520, 8, True, False, 1, flags, app_tag=0x1234)
    data = bytearray(520)
    dif.generate(ctx, memoryview(data), 1)
    assert data[514:516] == b"\x12\x34"
    other = dif.DifContext(520, 8, True, False, 1, flags, app_tag=0x4321)
    got = dif.verify(other, memoryview(data), 1)
    assert got == dif.DifError(dif.ERR_APPTAG, 0x4321, 0x1234, 0)


@pytest.mark.parametrize(("args", "text"), [
    ((520, 8, True, False, 5, 0), "No valid DIF type was provided."),
    ((520, 4, True, False, 1, 0), "Metadata size is smaller than DIF size."),
    ((8, 8, True, False, 1, 0), "Zero data block size is not allowed"),
    ((4, 8, True, False, 1, 0), "Block size is smaller than DIF size."),
    ((1000, 8, False, False, 1, 0), "Data block size should be a multiple of 512B"),
])
def test_context_refusals_use_spdk_texts(args: tuple[Any, ...], text: str) -> None:
    with pytest.raises(OperationError) as e:
        dif.DifContext(*args)
    assert e.value.errno == errno.EINVAL and e.value.detail == text
    with pytest.raises(OperationError) as e:
        dif.DifContext(528, 16, True, False, 1, 0, pi_format=dif.PI_FORMAT_64)
    assert e.value.detail == "Data block size should be a multiple of 4kB"
    with pytest.raises(OperationError) as e:
        dif.DifContext(520, 8, True, False, 1, 0, pi_format=3)
    assert e.value.detail == "No valid DIF PI format provided."


def test_formatted_block_pi_is_spdks() -> None:
    # malloc_disk_setup_pi: app tag 0xFFFF; the reftag "ignore" value where reftags are
    # checked (types 1, 2), none (0) for type 3.
    t1 = dif.DifContext(520, 8, True, False, 1, dif.check_flags(1))
    assert dif.zero_block_pi(t1) == b"\x00\x00\xff\xff\xff\xff\xff\xff"
    t3 = dif.DifContext(520, 8, True, False, 3, dif.check_flags(3))
    assert dif.zero_block_pi(t3) == b"\x00\x00\xff\xff\x00\x00\x00\x00"
    t64 = dif.DifContext(4096, 16, False, True, 1, dif.check_flags(1), pi_format=2)
    assert struct.unpack(">QHHI", dif.zero_block_pi(t64)) == (
        dif.crc64_nvme(bytes(4096)), 0xFFFF, 0xFFFF, 0xFFFFFFFF)


# ------------------------------------------------------------------- malloc and null


def pi_blocks(bs: int, ms: int, inter: bool, head: bool, fmt: int, lba: int, n: int,
              dif_type: int = 1) -> tuple[bytes, bytes | None]:
    _ctx, data, md = make(bs, ms, inter, head, fmt, dif_type, n, ref=lba)
    return bytes(data), None if md is None else bytes(md)


def failed(desc: Descriptor) -> int:
    return int(desc.bdev.stat.errors.get("failed", 0))


@pytest.mark.parametrize("fmt", FORMATS)
async def test_malloc_round_trip_checks_and_corrupted_guard(
        layer: BdevLayer, fmt: tuple[int, int, bool, bool, int]) -> None:
    bs, ms, inter, head, pif = fmt
    b = module(layer, MallocModule).create(name="D", block_size=bs, num_blocks=16, md_size=ms,
                                           md_interleave=inter, dif_type=1,
                                           dif_is_head_of_md=head, dif_pi_format=pif)
    assert isinstance(b, MallocDifBdev)
    assert b.block_size == (bs + ms if inter else bs) and b.data_block_size == bs
    desc = layer.open("D", write=True)
    unit = b.block_size
    data, md = pi_blocks(bs, ms, inter, head, pif, lba=4, n=3)

    # A fresh bdev reads back with every check on (formatted: app tag 0xFFFF).
    if inter:
        assert len(await desc.read_async(0, 16 * unit)) == 16 * unit
        await desc.write_async(4 * unit, data)
        assert await desc.read_async(4 * unit, 3 * unit) == data
        with pytest.raises(OperationError) as e:  # PI for LBA 4 written at LBA 5
            await desc.write_async(5 * unit, data)
        assert e.value.errno == errno.EIO
        assert await desc.read_async(5 * unit, unit) == data[unit:2 * unit]  # unchanged
        b.view[4 * unit + 100] ^= 0x40  # corrupt the stored data: the guard no longer fits
    else:
        fresh, fresh_md = await desc.read_md_async(0, 16 * unit)
        assert fresh == bytes(16 * unit) and len(fresh_md) == 16 * ms
        await desc.write_md_async(4 * unit, data, md)
        assert await desc.read_md_async(4 * unit, 3 * unit) == (data, md)
        with pytest.raises(OperationError) as e:
            await desc.write_md_async(5 * unit, data, md)
        assert e.value.errno == errno.EIO
        pi = b.dif_ctx.guard_interval
        b.md_view[4 * ms + pi] ^= 0x01  # corrupt the stored guard
        # Plain reads carry no metadata and are not checked, as in SPDK.
        assert await desc.read_async(4 * unit, unit) == data[:unit]
    before = failed(desc)
    read = desc.read_async(4 * unit, 3 * unit) if inter else desc.read_md_async(4 * unit, 3 * unit)
    with pytest.raises(OperationError) as e:
        await read
    assert e.value.errno == errno.EIO and failed(desc) == before + 1

    # Unmap and write-zeroes leave formatted blocks, which pass the checks again.
    await desc.unmap_async(4 * unit, unit)
    await desc.write_zeroes_async(5 * unit, 2 * unit)
    if inter:
        got = await desc.read_async(4 * unit, 3 * unit)
        assert all(got[i * unit:i * unit + bs] == bytes(bs) for i in range(3))
    else:
        got, _ = await desc.read_md_async(4 * unit, 3 * unit)
        assert got == bytes(3 * unit)
    desc.close()


async def test_malloc_md_without_dif_and_md_buffer_rules(layer: BdevLayer) -> None:
    m = module(layer, MallocModule)
    sep = m.create(name="S", block_size=512, num_blocks=8, md_size=64)
    inter = m.create(name="I", block_size=512, num_blocks=8, md_size=64, md_interleave=True)
    m.create(name="P", block_size=512, num_blocks=8)
    assert type(sep) is MallocBdev and type(inter) is MallocBdev  # no checks, no DIF class
    ds, di, dp = (layer.open(n, write=True) for n in "SIP")
    await ds.write_md_async(512, b"a" * 1024, b"m" * 128)
    assert await ds.read_md_async(512, 1024) == (b"a" * 1024, b"m" * 128)
    assert await ds.read_async(512, 512) == b"a" * 512
    # A metadata buffer of the wrong length, or on a bdev without separate metadata: -EINVAL.
    assert complete(lambda cb: ds.write_md(0, b"a" * 512, b"m" * 8, cb))[0] == -errno.EINVAL
    assert complete(lambda cb: di.read_md(0, 576, cb))[0] == -errno.EINVAL
    assert complete(lambda cb: dp.read_md(0, 512, cb))[0] == -errno.EINVAL
    assert inter.block_size == 576 and inter.physical_block_size == 512
    for d in (ds, di, dp):
        d.close()


@pytest.mark.parametrize(("md_size", "dif_type", "head"), [(8, 1, False), (16, 3, True),
                                                            (16, 2, False)])
async def test_null_reads_carry_pi_and_writes_are_checked(
        layer: BdevLayer, md_size: int, dif_type: int, head: bool) -> None:
    b = module(layer, NullModule).create(name="N", block_size=512, num_blocks=64, md_size=md_size,
                                         dif_type=dif_type, dif_is_head_of_md=head)
    assert isinstance(b, NullDifBdev) and b.block_size == 512 + md_size
    desc = layer.open("N", write=True)
    unit = b.block_size
    got = await desc.read_async(10 * unit, 4 * unit)
    ctx = dif.DifContext(unit, md_size, True, head, dif_type, dif.check_flags(dif_type))
    assert dif.verify(ctx, memoryview(got), 4, init_ref_tag=10) is None
    assert all(got[i * unit:i * unit + 512] == bytes(512) for i in range(4))  # zero data
    if dif_type != 3:
        _, app, ref = ctx.unpack(got[unit + ctx.guard_interval:][:8])
        assert (app, ref) == (0, 11)  # generated with the LBA as reference tag
    await desc.write_async(10 * unit, got)  # its own PI passes
    bad = bytearray(got)
    bad[7] ^= 1
    with pytest.raises(OperationError) as e:
        await desc.write_async(10 * unit, bytes(bad))
    assert e.value.errno == errno.EIO
    desc.close()


async def test_plain_bdevs_keep_their_classes(layer: BdevLayer) -> None:
    # No metadata, or metadata without DIF: the unchecked fast path, nothing per I/O.
    assert type(module(layer, MallocModule).create(block_size=512, num_blocks=8)) is MallocBdev
    assert type(module(layer, NullModule).create(name="N", block_size=512, num_blocks=8,
                                                 md_size=8)) is NullBdev


async def test_passthru_carries_the_format_and_the_metadata(layer: BdevLayer) -> None:
    base = module(layer, MallocModule).create(name="M", block_size=512, num_blocks=8,
                                              md_size=16, dif_type=1, dif_is_head_of_md=True)
    module(layer, PassthruModule).create(base_bdev_name="M", name="PT")
    pt = layer.get("PT")
    assert pt is not None and pt.md_info() == base.md_info()
    desc = layer.open("PT", write=True)
    data, md = pi_blocks(512, 16, False, True, dif.PI_FORMAT_16, lba=2, n=2)
    assert md is not None
    await desc.write_md_async(1024, data, md)
    assert await desc.read_md_async(1024, 1024) == (data, md)
    with pytest.raises(OperationError):  # the base checks: PI for LBA 2 at LBA 3
        await desc.write_md_async(1536, data, md)
    desc.close()


@pytest.mark.parametrize("inter", [True, False])
async def test_split_parts_remap_reference_tags(layer: BdevLayer, inter: bool) -> None:
    base = module(layer, MallocModule).create(name="M", block_size=512, num_blocks=8,
                                              md_size=8, md_interleave=inter, dif_type=1)
    assert module(layer, SplitModule).create("M", 2) == ["Mp0", "Mp1"]
    unit = base.block_size
    part = layer.open("Mp1", write=True)
    whole = layer.open("M", write=False)  # claimed by the split
    data, md = pi_blocks(512, 8, inter, False, dif.PI_FORMAT_16, lba=1, n=2)  # part LBAs
    if inter:
        await part.write_async(unit, data)
        assert await part.read_async(unit, 2 * unit) == data  # back with the part's LBAs
        stored = await whole.read_async(5 * unit, 2 * unit)  # the base's check passed too
        assert [struct.unpack(">I", stored[i * unit + 516:i * unit + 520])[0]
                for i in range(2)] == [5, 6]
        with pytest.raises(OperationError):  # tags for another part LBA
            await part.write_async(2 * unit, data)
    else:
        assert md is not None
        await part.write_md_async(unit, data, md)
        assert await part.read_md_async(unit, 2 * unit) == (data, md)
        _, stored_md = await whole.read_md_async(5 * unit, 2 * unit)
        assert [struct.unpack(">I", stored_md[i * 8 + 4:i * 8 + 8])[0] for i in range(2)] == [5, 6]
        with pytest.raises(OperationError):
            await part.write_md_async(2 * unit, data, md)
    part.close()
    whole.close()


# ------------------------------------------------------------------------------ exports


async def test_exports_without_metadata_refuse_interleaved_md(layer: BdevLayer) -> None:
    m = module(layer, MallocModule)
    inter = m.create(name="I", block_size=512, num_blocks=8, md_size=8, md_interleave=True,
                     dif_type=1)
    sep = m.create(name="S", block_size=4096, num_blocks=8, md_size=8, dif_type=1)
    with pytest.raises(OperationError) as e:
        refuse_interleaved_md(inter, "the kernel's NBD")
    assert e.value.errno == errno.EINVAL and "interleaved metadata" in e.value.message
    with pytest.raises(OperationError) as e:
        device_params(inter)
    assert e.value.errno == errno.EINVAL and "ublk" in e.value.message
    refuse_interleaved_md(sep, "ublk")  # separate metadata: the data alone is exported
    assert device_params(sep).logical_bs_shift == 12


# -------------------------------------------------------------------------------- RPC


@pytest.fixture
def t(shared_target: Target) -> Iterator[Target]:
    yield shared_target
    left = names(shared_target)
    assert left == [], f"test left bdevs behind: {left}"


BLOCKDEV_DIF = [  # test/bdev/blockdev.sh dif_insert_strip_test_suite
    "bdev_malloc_create -b Malloc_DIF_1 1 512 -m 8 -t 1 -f 0 -i",
    "bdev_malloc_create -b Malloc_DIF_2 1 512 -m 16 -t 1 -f 0 -i",
    "bdev_malloc_create -b Malloc_DIF_3 1 512 -m 16 -t 1 -f 0 -i -d",
]
NULL_DIF = [
    "bdev_null_create Null_DIF 1 512 -m 16 -t 3 -d",
    # test/nvmf/target/dif.sh
    "bdev_null_create bdev_null0 64 512 --md-size 16 --dif-type 1",
]


@pytest.mark.parametrize("via", ["spdk", "cli"])
def test_blockdev_sh_dif_bdevs(t: Target, via: str) -> None:
    run = t.spdk if via == "spdk" else t.cli
    for line in BLOCKDEV_DIF + NULL_DIF:
        assert run(*line.split()).stdout.strip() == line.split()[line.split().index("-b") + 1
                                                                 if "-b" in line else 1]
    by_name = {b["name"]: b for b in json.loads(run("bdev_get_bdevs").stdout)}
    one = by_name["Malloc_DIF_1"]
    assert list(one)[10:19] == [
        "uuid", "numa_id", "md_size", "md_interleave", "dif_type", "dif_is_head_of_md",
        "enabled_dif_check_types", "dif_pi_format", "assigned_rate_limits"]
    assert (one["block_size"], one["num_blocks"], one["md_size"], one["md_interleave"]) == (
        520, 2048, 8, True)
    assert one["enabled_dif_check_types"] == {"reftag": True, "apptag": False, "guard": True}
    assert (one["dif_type"], one["dif_is_head_of_md"], one["dif_pi_format"]) == (1, False, 0)
    assert by_name["Malloc_DIF_3"]["dif_is_head_of_md"] is True
    null = by_name["Null_DIF"]
    assert (null["block_size"], null["md_size"], null["dif_type"]) == (528, 16, 3)
    assert null["enabled_dif_check_types"] == {"reftag": False, "apptag": False, "guard": True}
    assert by_name["bdev_null0"]["num_blocks"] == 64 * 2048
    for name in ("Malloc_DIF_1", "Malloc_DIF_2", "Malloc_DIF_3"):
        run("bdev_malloc_delete", name)
    run("bdev_null_delete", "Null_DIF")
    run("bdev_null_delete", "bdev_null0")


def test_md_without_dif_reports_no_dif_fields(t: Target) -> None:
    t.spdk("bdev_malloc_create", "-b", "S", "1", "4096", "-m", "64")
    s = t.rpc("bdev_get_bdevs", {"name": "S"})[0]
    assert (s["block_size"], s["md_size"], s["md_interleave"], s["dif_type"]) == (
        4096, 64, False, 0)
    assert "enabled_dif_check_types" not in s and "dif_pi_format" not in s
    t.rpc("bdev_malloc_delete", {"name": "S"})


@pytest.mark.parametrize(("method", "params", "text"), [
    ("bdev_malloc_create", {"md_size": 12}, "metadata size 12 is not supported"),
    ("bdev_malloc_create", {"dif_type": 1}, "Metadata size is smaller than DIF size."),
    ("bdev_malloc_create", {"dif_type": 1, "md_size": 8, "dif_pi_format": 2},
     "Metadata size is smaller than DIF size."),
    ("bdev_malloc_create", {"dif_type": 1, "md_size": 16, "dif_pi_format": 1},
     "Data block size should be a multiple of 4kB"),
    ("bdev_malloc_create", {"dif_type": 9, "md_size": 8}, "No valid DIF type was provided."),
    ("bdev_null_create", {"dif_type": 1, "md_size": 16, "dif_pi_format": 7},
     "DIF configuration was wrong: No valid DIF PI format provided."),
])
def test_bad_dif_params_are_refused(t: Target, method: str, params: dict[str, Any],
                                    text: str) -> None:
    err = rpc_error(t, method, {"name": "X", "num_blocks": 8, "block_size": 512, **params})
    assert err["code"] == -22 and err["message"].startswith("Invalid argument")
    assert text in err["message"]


def test_save_config_replays_md_and_dif_exactly(start_target: Any, tmp_path: Path) -> None:
    first = start_target()
    for line in BLOCKDEV_DIF + NULL_DIF[:1]:
        first.spdk(*line.split())
    first.spdk("bdev_malloc_create", "-b", "Sep", "1", "4096", "-m", "32", "-t", "2", "-f", "2")
    first.spdk("bdev_malloc_create", "-b", "Plain", "1", "512", "-m", "8", "-t", "0")
    before = {b["name"]: b for b in first.rpc("bdev_get_bdevs")}
    config = json.loads(first.spdk("save_config").stdout)
    malloc = {c["params"]["name"]: c["params"] for s in config["subsystems"]
              if s["subsystem"] == "bdev" for c in s["config"]
              if c["method"] == "bdev_malloc_create"}
    # The data block size, and md_interleave only where it is set.
    assert malloc["Malloc_DIF_1"]["block_size"] == 512
    assert malloc["Malloc_DIF_1"]["md_interleave"] is True
    assert "md_interleave" not in malloc["Sep"]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    first.stop()
    second = start_target("--json", str(path))
    after = {b["name"]: b for b in second.rpc("bdev_get_bdevs")}
    assert sorted(after) == sorted(before)  # module by module: not creation order
    for name, b in before.items():
        assert after[name] == b, name
    assert json.loads(second.spdk("save_config").stdout) == config


@pytest.mark.skipif(shutil.which("qemu-io") is None, reason="needs qemu-io (deps/apt-test.txt)")
def test_network_nbd_exports_the_data_of_dif_bdevs(t: Target) -> None:
    sock = Path(t.sock).parent / "dif-nbd.sock"
    t.spdk("bdev_malloc_create", "-b", "Sep", "1", "512", "-m", "8", "-t", "1")
    t.spdk("bdev_malloc_create", "-b", "Inter", "1", "512", "-m", "8", "-t", "1", "-i")
    uri = {n: f"nbd+unix:///{n}?socket={sock}" for n in ("Sep", "Inter")}
    for name in uri:
        t.rpc("nbd_start_disk", {"bdev_name": name, "nbd_device": uri[name]})

    def qemu_io(*cmds: str, target: str) -> str:
        argv = ["qemu-io", "-f", "raw"]
        for c in cmds:
            argv += ["-c", c]
        res = subprocess.run([*argv, target], capture_output=True, text=True, timeout=60)
        return res.stdout + res.stderr

    # Separate metadata: the data alone travels, unchecked, as SPDK's exports do.
    out = qemu_io("write -P 0x5a 4k 64k", "read -P 0x5a 4k 64k", target=uri["Sep"])
    assert "Pattern verification failed" not in out and "failed" not in out, out
    # Interleaved: raw 520-byte blocks; formatted ones read back, data without valid PI is
    # refused by malloc's check (EIO on the wire).
    assert "failed" not in qemu_io("read 0 1040", target=uri["Inter"])
    assert "Invalid argument" in qemu_io("read 0 512", target=uri["Inter"])  # not a block
    assert "Input/output error" in qemu_io("write -P 0x5a 0 520", target=uri["Inter"])
    for name in uri:
        t.rpc("nbd_stop_disk", {"nbd_device": uri[name]})
        t.rpc("bdev_malloc_delete", {"name": name})
