"""CRCs of long input in pure Python, from the linearity of a CRC over GF(2).

The pure-Python CRC32C (``pybdev.proto.nvme.crc32c``, when its C package is missing) and
the protection-information guards (``pybdev.bdev.guard_crc``: CRC-16/T10-DIF and
CRC-64/NVME) share this method for data blocks; short input goes through byte tables in
those modules.

A non-reflected CRC with init 0 and no final XOR is ``M(x) * x^width mod P``, linear in the
message bits: bit ``k`` of the CRC is the parity of (message AND mask_k), where bit ``d`` of
mask_k is bit ``k`` of ``x^(d + width) mod P``. The masks are built once per width by
doubling (the upper half of 2D bits is the lower half multiplied by ``x^D``, a
width x width matrix), then a CRC is ``width`` big-integer ANDs and ``int.bit_count``
calls, which run in C.

Real CRCs add a seed, reflection and a final XOR around that core; :meth:`LinearCrc.crc`
takes the message as an integer with the seed already XORed into its first ``width``
bits, and :meth:`LinearCrc.reflected` does the whole job for a reflected CRC.
"""

from __future__ import annotations

from typing import Final

__all__ = ["REV8", "LinearCrc", "reflect"]

#: Each byte with its bits in reverse order (for ``bytes.translate``).
REV8: Final = bytes(int(f"{b:08b}"[::-1], 2) for b in range(256))


def reflect(value: int, width: int) -> int:
    """``value``'s low ``width`` bits in reverse order."""
    return int(f"{value:0{width}b}"[::-1], 2)


class LinearCrc:
    """The masks of a non-reflected CRC of ``width`` bits (``poly`` without x^width)."""

    def __init__(self, width: int, poly: int) -> None:
        self.width = width
        self.bits = 1
        self.masks = [(poly >> k) & 1 for k in range(width)]  # x^width mod P
        # Multiplication by x as a matrix of columns (column i: the image of x^i); then
        # always multiplication by x^bits.
        self.power = [1 << (i + 1) if i + 1 < width else poly for i in range(width)]
        self.buckets: dict[int, list[int]] = {}
        self._ones = (1 << width) - 1

    @staticmethod
    def _apply(cols: list[int], v: int) -> int:
        y = 0
        i = 0
        while v:
            if v & 1:
                y ^= cols[i]
            v >>= 1
            i += 1
        return y

    def _grow(self, need: int) -> None:
        width = self.width
        while self.bits < need:
            d = self.bits
            cols = self.power
            old = self.masks
            new = []
            for k in range(width):
                part = 0
                for i in range(width):
                    if (cols[i] >> k) & 1:
                        part ^= old[i]
                new.append(old[k] | (part << d))
            self.masks = new
            self.power = [self._apply(cols, c) for c in cols]
            self.bits = 2 * d

    def for_bits(self, nbits: int) -> list[int]:
        """The masks cut to the power of two >= nbits (the ANDs stay as short as the data)."""
        size = 1 << (nbits - 1).bit_length()
        masks = self.buckets.get(size)
        if masks is None:
            self._grow(size)
            cut = (1 << size) - 1
            masks = self.buckets[size] = [m & cut for m in self.masks]
        return masks

    def crc(self, message: int, nbits: int) -> int:
        """The CRC (init 0, no final XOR) of the ``nbits``-bit big-endian ``message``."""
        out = 0
        for k, m in enumerate(self.for_bits(nbits)):
            out |= ((message & m).bit_count() & 1) << k
        return out

    def reflected(self, data: bytes, crc: int) -> int:
        """A reflected CRC with init and final XOR all ones, continued from ``crc``.

        ``self`` holds the non-reflected polynomial; bit-reversed bytes read big-endian
        are the message in its order, and the result is reflected back.
        """
        width = self.width
        nbits = len(data) << 3
        message = int.from_bytes(data.translate(REV8), "big")
        message ^= reflect(crc ^ self._ones, width) << (nbits - width)
        return reflect(self.crc(message, nbits), width) ^ self._ones
