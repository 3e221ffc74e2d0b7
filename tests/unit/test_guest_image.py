"""The test guest's boot sector: shape, marker and the registers it touches."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.guest_image import (
    GUEST_MARKER,
    IMAGE_BYTES,
    MARKER_MAX,
    boot_sector,
    listing,
    make_guest_image,
)


def test_boot_sector_is_one_bootable_sector_with_the_marker() -> None:
    """512 bytes ending in the BIOS signature, the marker with CR LF NUL inside."""
    sector = boot_sector("hello")
    assert 512 == len(sector)
    assert b"\x55\xaa" == sector[510:]
    assert b"hello\r\n\x00" in sector


def test_code_selects_bus_0_reads_down_and_ejects_with_32_bit_io() -> None:
    """mov dx,0xae10 / xor eax,eax / out dx,eax, then in eax from 0xae04 and out eax to 0xae08."""
    sector = boot_sector()
    assert b"\xba\x10\xae\x66\x31\xc0\x66\xef" in sector
    assert b"\xba\x04\xae\x66\xed" in sector
    assert b"\xba\x08\xae\x66\xef" in sector


def test_message_pointer_points_at_the_marker() -> None:
    """The mov si operand is the load address of the marker's first byte."""
    sector = boot_sector()
    at = sector.index(b"\xbe")  # mov si, imm16 (first 0xbe byte is the opcode)
    assert sector.index(GUEST_MARKER.encode()) + 0x7C00 == int.from_bytes(sector[at + 1:at + 3],
                                                                         "little")


@pytest.mark.parametrize("marker", ["", "x" * (MARKER_MAX + 1), "caf\u00e9", "a\nb", "a\x00b"])
def test_bad_markers_are_refused(marker: str) -> None:
    """Empty, too long, non-ASCII or control characters: ValueError."""
    with pytest.raises(ValueError):
        boot_sector(marker)


def test_longest_marker_fits() -> None:
    """A marker of MARKER_MAX characters still leaves room for the signature."""
    assert 512 == len(boot_sector("m" * MARKER_MAX))


def test_image_is_sector_then_sparse_zeros(tmp_path: Path) -> None:
    """make_guest_image writes the sector at offset 0 in an IMAGE_BYTES file and returns path."""
    path = make_guest_image(tmp_path / "g.img", "mark")
    assert tmp_path / "g.img" == path
    assert IMAGE_BYTES == path.stat().st_size
    assert boot_sector("mark") == path.read_bytes()[:512]


def test_listing_names_every_instruction() -> None:
    """The listing shows the eject write and the marker."""
    text = listing("abc")
    assert "out dx, eax        ; QEMU removes the lowest slot set" in text
    assert "'abc'" in text
