"""Protection information (T10 DIF/DIX, NVMe PI): generate and verify, sans I/O.

What SPDK's ``lib/util/dif.c`` does for the bdev modules, on Python buffers: a
:class:`DifContext` (``spdk_dif_ctx_init``, with its checks and error texts) describes a
format, and :func:`generate` / :func:`verify` work on a run of blocks, metadata either
interleaved with the data (DIF: each block is data then metadata) or in a buffer of its own
(DIX: ``md``). Nothing here knows of bdevs; malloc and null call it.

The PI field sits at ``guard_interval`` inside each block's metadata area: at its start
(``dif_is_head_of_md``) or in its last 8/16 bytes. Its layout per format (big-endian):

========  =============  =========  =========================
format    guard          app tag    reference tag
========  =============  =========  =========================
16 (0)    CRC-16 T10-DIF @0, 2 B    @4, 4 B
32 (1)    CRC-32C @0     @4, 2 B    @8, 8 B
64 (2)    CRC-64 NVMe @0 @8, 2 B    @10, 6 B
========  =============  =========  =========================

The guard CRCs come from ``pybdev.bdev.guard_crc`` (16- and 64-bit) and
``pybdev.proto.nvme.crc32c`` (32-bit). The guard covers the data up to the PI field (for
DIX, the data block and then the metadata before the PI). An application tag of 0xFFFF
turns every check off for types 1 and 2; type 3 needs the reference tag all ones as well
(SPDK's ``_dif_ignore``).
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable
from typing import Final, NamedTuple

from pybdev.bdev.guard_crc import crc16_t10dif, crc64_nvme
from pybdev.errors import OperationError
from pybdev.proto.nvme.crc32c import crc32c

__all__ = [
    "APPTAG_IGNORE",
    "DIF_DISABLE",
    "DIF_TYPE1",
    "DIF_TYPE2",
    "DIF_TYPE3",
    "ERR_APPTAG",
    "ERR_GUARD",
    "ERR_REFTAG",
    "FLAGS_APPTAG_CHECK",
    "FLAGS_GUARD_CHECK",
    "FLAGS_REFTAG_CHECK",
    "PI_FORMAT_16",
    "PI_FORMAT_32",
    "PI_FORMAT_64",
    "REFTAG_IGNORE",
    "DifContext",
    "DifError",
    "check_flags",
    "crc16_t10dif",
    "crc64_nvme",
    "generate",
    "pi_size",
    "remap_ref_tags",
    "verify",
    "zero_block_pi",
]

DIF_DISABLE: Final = 0
DIF_TYPE1: Final = 1
DIF_TYPE2: Final = 2
DIF_TYPE3: Final = 3
PI_FORMAT_16: Final = 0
PI_FORMAT_32: Final = 1
PI_FORMAT_64: Final = 2
# SPDK's include/spdk/dif.h values, so flags read the same as SPDK's.
FLAGS_REFTAG_CHECK: Final = 1 << 26
FLAGS_APPTAG_CHECK: Final = 1 << 27
FLAGS_GUARD_CHECK: Final = 1 << 28
REFTAG_IGNORE: Final = 0xFFFFFFFF
APPTAG_IGNORE: Final = 0xFFFF
ERR_REFTAG: Final = 0x1
ERR_APPTAG: Final = 0x2
ERR_GUARD: Final = 0x4

_MASK_16: Final = 0xFFFFFFFF
_MASK_32: Final = 0xFFFFFFFFFFFFFFFF
_MASK_64: Final = 0xFFFFFFFFFFFF


def pi_size(pi_format: int) -> int:
    """Bytes of the PI field (``spdk_dif_pi_format_get_size``)."""
    return 8 if pi_format == PI_FORMAT_16 else 16


# ------------------------------------------------------------------------------- CRCs
_GUARD: Final[dict[int, Callable[[bytes | bytearray | memoryview, int], int]]] = {
    PI_FORMAT_16: crc16_t10dif, PI_FORMAT_32: crc32c, PI_FORMAT_64: crc64_nvme,
}
_PI_STRUCT: Final = {PI_FORMAT_16: struct.Struct(">HHI"), PI_FORMAT_32: struct.Struct(">IHHQ"),
                     PI_FORMAT_64: struct.Struct(">QHHI")}


# ---------------------------------------------------------------------------- context
class DifError(NamedTuple):
    """A failed check (SPDK's ``struct spdk_dif_error``): which, and in which block."""

    err_type: int  # ERR_GUARD, ERR_APPTAG or ERR_REFTAG
    expected: int
    actual: int
    offset_blocks: int  # block index inside the checked run

    def describe(self) -> str:
        what = {ERR_GUARD: "Guard", ERR_APPTAG: "App Tag", ERR_REFTAG: "Ref Tag"}[self.err_type]
        return (f"{what} mismatch in block {self.offset_blocks}: expected {self.expected:#x}, "
                f"actual {self.actual:#x}")


class DifContext:
    """One PI format and the tags to generate or expect (``spdk_dif_ctx_init``).

    ``block_size`` is the bdev's block size: data plus metadata when ``md_interleave``,
    the data alone otherwise. Raises :class:`OperationError` (EINVAL) with SPDK's text
    for a format SPDK refuses.
    """

    __slots__ = ("app_tag", "apptag_mask", "block_size", "dif_type", "flags", "guard_fn",
                 "guard_interval", "init_ref_tag", "md_interleave", "md_size", "pi_format",
                 "pi_size", "pi_struct")

    def __init__(self, block_size: int, md_size: int, md_interleave: bool, dif_is_head_of_md: bool,
                 dif_type: int, flags: int, init_ref_tag: int = 0, apptag_mask: int = 0xFFFF,
                 app_tag: int = 0, pi_format: int = PI_FORMAT_16) -> None:
        if pi_format not in _GUARD:
            raise OperationError(errno.EINVAL, "No valid DIF PI format provided.")
        if dif_type not in (DIF_DISABLE, DIF_TYPE1, DIF_TYPE2, DIF_TYPE3):
            raise OperationError(errno.EINVAL, "No valid DIF type was provided.")
        size = pi_size(pi_format)
        if md_size < size:
            raise OperationError(errno.EINVAL, "Metadata size is smaller than DIF size.")
        if md_interleave:
            if block_size < md_size:
                raise OperationError(errno.EINVAL, "Block size is smaller than DIF size.")
            data_block_size = block_size - md_size
        else:
            data_block_size = block_size
        if data_block_size == 0:
            raise OperationError(errno.EINVAL, "Zero data block size is not allowed")
        if pi_format == PI_FORMAT_16:
            if data_block_size % 512:
                raise OperationError(errno.EINVAL,
                                     "Data block size should be a multiple of 512B")
        elif data_block_size % 4096:
            raise OperationError(errno.EINVAL, "Data block size should be a multiple of 4kB")
        self.block_size = block_size
        self.md_size = md_size
        self.md_interleave = md_interleave
        self.pi_format = pi_format
        self.pi_size = size
        if dif_is_head_of_md:
            self.guard_interval = block_size - md_size if md_interleave else 0
        else:
            self.guard_interval = block_size - size if md_interleave else md_size - size
        self.dif_type = dif_type
        self.flags = flags
        self.init_ref_tag = init_ref_tag
        self.apptag_mask = apptag_mask
        self.app_tag = app_tag
        self.guard_fn = _GUARD[pi_format]
        self.pi_struct = _PI_STRUCT[pi_format]

    # -- one PI field ---------------------------------------------------------------------
    def pack(self, guard: int, offset_blocks: int, init_ref_tag: int) -> bytes:
        """The PI field of block ``offset_blocks`` (SPDK's ``_dif_generate``)."""
        flags = self.flags
        fmt = self.pi_format
        if not flags & FLAGS_GUARD_CHECK:
            guard = 0
        app = self.app_tag if flags & FLAGS_APPTAG_CHECK else 0
        ref = 0
        if flags & FLAGS_REFTAG_CHECK:
            if init_ref_tag == REFTAG_IGNORE:
                ref = _MASK_16 if fmt == PI_FORMAT_16 else (
                    _MASK_32 if fmt == PI_FORMAT_32 else _MASK_64)
            elif self.dif_type != DIF_TYPE3:
                ref = init_ref_tag + offset_blocks
            else:
                ref = init_ref_tag
        return self.encode(guard, app, ref)

    def encode(self, guard: int, app: int, ref: int) -> bytes:
        """A PI field of these values (the reference tag cut to the format's width)."""
        fmt = self.pi_format
        if fmt == PI_FORMAT_16:
            return self.pi_struct.pack(guard, app, ref & _MASK_16)
        if fmt == PI_FORMAT_32:
            return self.pi_struct.pack(guard, app, 0, ref & _MASK_32)
        ref &= _MASK_64
        return self.pi_struct.pack(guard, app, ref >> 32, ref & 0xFFFFFFFF)

    def ignored(self, app: int, ref: int) -> bool:
        """SPDK's ``_dif_ignore``: the escape values that turn a block's checks off."""
        if app != APPTAG_IGNORE:
            return False
        if self.dif_type in (DIF_TYPE1, DIF_TYPE2):
            return True
        fmt = self.pi_format
        return self.dif_type == DIF_TYPE3 and ref == (
            _MASK_16 if fmt == PI_FORMAT_16 else _MASK_32 if fmt == PI_FORMAT_32 else _MASK_64)

    def reftag_error(self, ref: int, expected: int, offset_blocks: int) -> DifError | None:
        """SPDK's ``_dif_reftag_check``: types 1 and 2 compare, type 3 has none to check."""
        if not self.flags & FLAGS_REFTAG_CHECK or self.dif_type not in (DIF_TYPE1, DIF_TYPE2):
            return None
        fmt = self.pi_format
        want = expected & _MASK_16 if fmt == PI_FORMAT_16 else (
            expected & _MASK_64 if fmt == PI_FORMAT_64 else expected)
        return None if ref == want else DifError(ERR_REFTAG, expected, ref, offset_blocks)

    def unpack(self, pi: bytes | memoryview) -> tuple[int, int, int]:
        """(guard, app tag, reference tag) of a PI field."""
        if self.pi_format == PI_FORMAT_16:
            return self.pi_struct.unpack(pi)  # type: ignore[no-any-return]
        if self.pi_format == PI_FORMAT_32:
            guard, app, _p1, ref = self.pi_struct.unpack(pi)
            return guard, app, ref
        guard, app, hi, lo = self.pi_struct.unpack(pi)
        return guard, app, (hi << 32) | lo

    def check(self, pi: bytes | memoryview, guard: int, offset_blocks: int,
              init_ref_tag: int) -> DifError | None:
        """SPDK's ``_dif_verify`` of one block's PI against the guard computed over it."""
        got_guard, app, ref = self.unpack(pi)
        if self.ignored(app, ref):
            return None
        flags = self.flags
        if flags & FLAGS_GUARD_CHECK and got_guard != guard:
            return DifError(ERR_GUARD, got_guard, guard, offset_blocks)
        if flags & FLAGS_APPTAG_CHECK and (app & self.apptag_mask) != (
                self.app_tag & self.apptag_mask):
            return DifError(ERR_APPTAG, self.app_tag, app & self.apptag_mask, offset_blocks)
        return self.reftag_error(ref, init_ref_tag + offset_blocks, offset_blocks)


def check_flags(dif_type: int) -> int:
    """The checks malloc and null enable for a DIF type (guard, and reftag for types 1-2):
    the bdev API carries no application tag, so none is checked (SPDK's modules)."""
    if dif_type in (DIF_TYPE1, DIF_TYPE2):
        return FLAGS_GUARD_CHECK | FLAGS_REFTAG_CHECK
    if dif_type == DIF_TYPE3:
        return FLAGS_GUARD_CHECK
    return 0


def zero_block_pi(ctx: DifContext) -> bytes:
    """The PI a formatted (all-zero) block carries in SPDK's malloc: the guard of zeros,
    application tag 0xFFFF and the reference tag "ignore" value, so that every check
    passes until the block is written (``malloc_disk_setup_pi``). The same for every
    block, and for DIX as long as the metadata before the PI is zero."""
    gi = ctx.guard_interval
    if ctx.md_interleave:
        guard = ctx.guard_fn(bytes(gi), 0)
    else:
        guard = ctx.guard_fn(bytes(gi), ctx.guard_fn(bytes(ctx.block_size), 0))
    setup = DifContext.__new__(DifContext)
    for name in DifContext.__slots__:
        setattr(setup, name, getattr(ctx, name))
    setup.flags = ctx.flags | FLAGS_APPTAG_CHECK
    setup.app_tag = APPTAG_IGNORE
    return setup.pack(guard, 0, REFTAG_IGNORE)


# ---------------------------------------------------------------------- whole buffers
def _guard_of(ctx: DifContext, data: memoryview, start: int, md: memoryview | None,
              md_start: int) -> int:
    if not ctx.flags & FLAGS_GUARD_CHECK:
        return 0
    gi = ctx.guard_interval
    if md is None:
        return ctx.guard_fn(data[start:start + gi], 0)
    guard = ctx.guard_fn(data[start:start + ctx.block_size], 0)
    return ctx.guard_fn(md[md_start:md_start + gi], guard) if gi else guard


def generate(ctx: DifContext, data: memoryview, num_blocks: int,
             md: memoryview | None = None, init_ref_tag: int | None = None) -> None:
    """Write the PI of ``num_blocks`` blocks (``spdk_dif_generate``, or ``spdk_dix_generate``
    with ``md``); the buffers must be writable and exactly that long. ``init_ref_tag``
    (the context's when None) is the reference tag of the first block."""
    if ctx.dif_type == DIF_DISABLE:
        return
    ref = ctx.init_ref_tag if init_ref_tag is None else init_ref_tag
    bs, ms, gi, n = ctx.block_size, ctx.md_size, ctx.guard_interval, ctx.pi_size
    for i in range(num_blocks):
        guard = _guard_of(ctx, data, i * bs, md, i * ms)
        pi = ctx.pack(guard, i, ref)
        if md is None:
            at = i * bs + gi
            data[at:at + n] = pi
        else:
            at = i * ms + gi
            md[at:at + n] = pi


def verify(ctx: DifContext, data: memoryview, num_blocks: int,
           md: memoryview | None = None, init_ref_tag: int | None = None) -> DifError | None:
    """Check the PI of ``num_blocks`` blocks (``spdk_dif_verify`` / ``spdk_dix_verify``);
    the first failure, or None."""
    if ctx.dif_type == DIF_DISABLE:
        return None
    ref = ctx.init_ref_tag if init_ref_tag is None else init_ref_tag
    bs, ms, gi, n = ctx.block_size, ctx.md_size, ctx.guard_interval, ctx.pi_size
    for i in range(num_blocks):
        guard = _guard_of(ctx, data, i * bs, md, i * ms)
        if md is None:
            at = i * bs + gi
            err = ctx.check(data[at:at + n], guard, i, ref)
        else:
            at = i * ms + gi
            err = ctx.check(md[at:at + n], guard, i, ref)
        if err is not None:
            return err
    return None


def remap_ref_tags(ctx: DifContext, data: memoryview, num_blocks: int, md: memoryview | None,
                   init_ref_tag: int, remapped_init_ref_tag: int) -> DifError | None:
    """Check each block's reference tag against ``init_ref_tag`` + i and rewrite it as
    ``remapped_init_ref_tag`` + i (SPDK's ``spdk_dif_remap_ref_tag`` /
    ``spdk_dix_remap_ref_tag`` with the check on): how a part of a bdev moves its LBAs to
    the base's and back. Blocks with the escape tags are left alone. The first failure, or
    None; blocks before it are already rewritten, as in SPDK."""
    if ctx.dif_type == DIF_DISABLE:
        return None
    bs, ms, gi, n = ctx.block_size, ctx.md_size, ctx.guard_interval, ctx.pi_size
    buf = data if md is None else md
    unit = bs if md is None else ms
    for i in range(num_blocks):
        at = i * unit + gi
        guard, app, ref = ctx.unpack(buf[at:at + n])
        if ctx.ignored(app, ref):
            continue
        if ctx.dif_type != DIF_TYPE3:
            err = ctx.reftag_error(ref, init_ref_tag + i, i)
            if err is not None:
                return err
            new = remapped_init_ref_tag + i
        else:
            new = remapped_init_ref_tag
        buf[at:at + n] = ctx.encode(guard, app, new)
    return None
