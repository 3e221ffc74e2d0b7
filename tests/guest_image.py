"""A one-sector test guest: prints a marker on COM1 and ejects what QEMU asks to unplug.

A domain with no OS never lets go of a virtio NIC or disk: on QEMU's ``pc``
machine (i440fx, PIIX4 ACPI PCI hotplug) an unplug request only sets a bit
that the guest's ACPI code must answer by writing to the eject register.
This module builds a raw disk image whose boot sector, hand-assembled 16-bit
real-mode code that SeaBIOS loads at 0x7c00, does just that:

1. sets COM1 (I/O 0x3f8) to 115200 baud 8N1 with FIFOs on;
2. prints ``marker`` + CR LF on it, then waits ``PAUSE_TICKS`` BIOS timer ticks
   (18.2 a second, counted at 0x46c; ``hlt`` sleeps between them), about 0.27 s,
   and prints it again, for ever;
3. on every wake-up while it waits, selects PCI bus 0 (write 0 to 0xae10),
   reads the pending-removal bitmap (0xae04) and, when it is not zero, writes
   it to the eject register (0xae08). QEMU ejects the lowest slot of each
   write and emits DEVICE_DELETED, which libvirt turns into its
   device-removed event; a second slot goes on the next tick (~55 ms).

Boot it on TCG (domain type ``qemu``, ``GUEST_DOMAIN_TYPE``): on this kind of
host KVM is nested (``kvm_pvm``) and SeaBIOS takes 7-9 s to reach the boot
sector there, against 0.3-1 s on TCG; the loop itself costs nothing either way.

What it does not do: no ACPI tables are read and no ACPI event is handled, so
it ignores the power button (``shutdown()`` is never answered, only
``destroy()`` stops it); it acks hot-unplug on the root bus only (not behind a
PCI bridge, and not on q35/PCIe, whose hotplug works differently); it ejects
whatever is asked without looking; it never reads its disk, drives a NIC or
answers on the serial port; it needs a BIOS (SeaBIOS), not UEFI.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: A marker tests look for on the guest's serial console.
GUEST_MARKER = "compute-worker test guest up"
#: libvirt domain type to boot it with: TCG, which starts SeaBIOS about ten times faster here.
GUEST_DOMAIN_TYPE = "qemu"
#: Longest marker accepted; the code is about 100 bytes of the 510 free.
MARKER_MAX = 64
#: Size of the raw image (sparse past the boot sector).
IMAGE_BYTES = 1 << 20
#: Timer ticks (18.2 Hz) between two markers: about 0.27 s.
PAUSE_TICKS = 5

COM1 = 0x3F8
#: PIIX4 ACPI PCI hotplug registers (QEMU hw/acpi/pcihp.c), 32-bit access only.
PCIHP_DOWN = 0xAE04  # bitmap of slots QEMU asks the guest to release
PCIHP_EJECT = 0xAE08  # write a slot bitmap: QEMU removes the lowest slot set
PCIHP_SELECT = 0xAE10  # write the bus selector (0: the root bus)
BIOS_TICKS = 0x046C  # BIOS data area: timer ticks since midnight (low word)
LOAD_ADDRESS = 0x7C00


@dataclass(frozen=True)
class _Label:
    name: str


@dataclass(frozen=True)
class _Jump:
    """A short (rel8) jump to a label."""

    opcode: int
    target: str
    note: str


@dataclass(frozen=True)
class _Code:
    data: bytes
    note: str


_Item = _Label | _Jump | _Code


def _w(value: int) -> bytes:
    return value.to_bytes(2, "little")


def _out8(port: int, value: int, note: str) -> list[_Item]:
    return [_Code(b"\xba" + _w(port), f"mov dx, {port:#x}"),
            _Code(bytes([0xB0, value]), f"mov al, {value:#04x}   ; {note}"),
            _Code(b"\xee", "out dx, al")]


def _program(message_address: int) -> list[_Item]:
    """The boot sector's code; message_address is where the marker's bytes lie."""
    return [
        _Code(b"\xfa", "cli                ; no interrupt while the stack moves"),
        _Code(b"\x31\xc0", "xor ax, ax"),
        _Code(b"\x8e\xd8", "mov ds, ax         ; data (marker, 0x46c) at segment 0"),
        _Code(b"\x8e\xd0", "mov ss, ax"),
        _Code(b"\xbc" + _w(LOAD_ADDRESS), "mov sp, 0x7c00     ; stack below the code"),
        _Code(b"\xfb", "sti                ; the BIOS timer must tick (0x46c, hlt)"),
        _Code(b"\xfc", "cld                ; lodsb walks forward"),
        *_out8(COM1 + 1, 0x00, "IER: no UART interrupts"),
        *_out8(COM1 + 3, 0x80, "LCR: DLAB on, to set the divisor"),
        *_out8(COM1 + 0, 0x01, "DLL: divisor 1, 115200 baud"),
        *_out8(COM1 + 1, 0x00, "DLM: divisor high byte"),
        *_out8(COM1 + 3, 0x03, "LCR: 8N1, DLAB off"),
        *_out8(COM1 + 2, 0xC7, "FCR: FIFOs on and cleared"),
        *_out8(COM1 + 4, 0x03, "MCR: DTR and RTS"),
        _Label("print"),
        _Code(b"\xbe" + _w(message_address), "mov si, message"),
        _Label("next_char"),
        _Code(b"\xac", "lodsb              ; al = [si++]"),
        _Code(b"\x84\xc0", "test al, al"),
        _Jump(0x74, "pause", "jz pause           ; NUL ends the message"),
        _Code(b"\x88\xc4", "mov ah, al         ; keep the char while dx reads LSR"),
        _Label("wait_thr"),
        _Code(b"\xba" + _w(COM1 + 5), "mov dx, 0x3fd      ; LSR"),
        _Code(b"\xec", "in al, dx"),
        _Code(b"\xa8\x20", "test al, 0x20      ; THR empty?"),
        _Jump(0x74, "wait_thr", "jz wait_thr"),
        _Code(b"\xba" + _w(COM1), "mov dx, 0x3f8      ; THR"),
        _Code(b"\x88\xe0", "mov al, ah"),
        _Code(b"\xee", "out dx, al"),
        _Jump(0xEB, "next_char", "jmp next_char"),
        _Label("pause"),
        _Code(b"\x8b\x1e" + _w(BIOS_TICKS), "mov bx, [0x46c]    ; ticks when the pause began"),
        _Label("tick"),
        _Code(b"\xba" + _w(PCIHP_SELECT), "mov dx, 0xae10     ; hotplug bus select"),
        _Code(b"\x66\x31\xc0", "xor eax, eax"),
        _Code(b"\x66\xef", "out dx, eax        ; bus 0 (32-bit: the only size QEMU takes)"),
        _Code(b"\xba" + _w(PCIHP_DOWN), "mov dx, 0xae04     ; slots to release"),
        _Code(b"\x66\xed", "in eax, dx"),
        _Code(b"\x66\x85\xc0", "test eax, eax"),
        _Jump(0x74, "idle", "jz idle"),
        _Code(b"\xba" + _w(PCIHP_EJECT), "mov dx, 0xae08     ; eject"),
        _Code(b"\x66\xef", "out dx, eax        ; QEMU removes the lowest slot set"),
        _Label("idle"),
        _Code(b"\xf4", "hlt                ; sleep to the next interrupt (timer: 55 ms)"),
        _Code(b"\xa1" + _w(BIOS_TICKS), "mov ax, [0x46c]"),
        _Code(b"\x29\xd8", "sub ax, bx         ; ticks since the pause began (wraps fine)"),
        _Code(bytes([0x83, 0xF8, PAUSE_TICKS]), f"cmp ax, {PAUSE_TICKS}"),
        _Jump(0x72, "tick", "jb tick"),
        _Jump(0xEB, "print", "jmp print"),
    ]


def _size(item: _Item) -> int:
    return 0 if isinstance(item, _Label) else 2 if isinstance(item, _Jump) else len(item.data)


def _assemble(items: list[_Item]) -> list[tuple[int, bytes, str]]:
    """(offset, bytes, note) per instruction, short jumps resolved."""
    labels, offset = {}, 0
    for item in items:
        if isinstance(item, _Label):
            labels[item.name] = offset
        offset += _size(item)
    out, offset = [], 0
    for item in items:
        if isinstance(item, _Jump):
            rel = labels[item.target] - (offset + 2)
            assert -128 <= rel <= 127, f"{item.note}: {rel} out of rel8 range"
            out.append((offset, bytes([item.opcode, rel & 0xFF]), item.note))
        elif isinstance(item, _Code):
            out.append((offset, item.data, item.note))
        offset += _size(item)
    return out


def _check_marker(marker: str) -> bytes:
    if not 0 < len(marker) <= MARKER_MAX or not all(" " <= c <= "~" for c in marker):
        raise ValueError(f"marker must be 1-{MARKER_MAX} printable ASCII characters: "
                         f"{marker!r:.80}")
    return marker.encode("ascii")


def listing(marker: str = GUEST_MARKER) -> str:
    """The boot sector's code as an assembly listing (offset, bytes, instruction)."""
    code_size = sum(_size(i) for i in _program(0))
    rows = _assemble(_program(LOAD_ADDRESS + code_size))
    lines = [f"{LOAD_ADDRESS + off:04x}  {data.hex(' '):<18} {note}" for off, data, note in rows]
    lines.append(f"{LOAD_ADDRESS + code_size:04x}  message: {marker!r} CR LF NUL")
    return "\n".join(lines)


def boot_sector(marker: str = GUEST_MARKER) -> bytes:
    """The 512-byte boot sector that prints marker on COM1 and acks PCI hot-unplug."""
    text = _check_marker(marker) + b"\r\n\x00"
    code_size = sum(_size(i) for i in _program(0))
    code = b"".join(data for _, data, _ in _assemble(_program(LOAD_ADDRESS + code_size)))
    sector = code + text
    assert len(sector) <= 510, len(sector)
    return sector.ljust(510, b"\x00") + b"\x55\xaa"


def make_guest_image(path: Path, marker: str = GUEST_MARKER) -> Path:
    """Write a raw disk image at path whose boot sector is boot_sector(marker); path."""
    sector = boot_sector(marker)
    with open(path, "wb") as handle:
        handle.write(sector)
        handle.truncate(IMAGE_BYTES)
    return path
