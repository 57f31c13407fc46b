"""The Cortex-M4 ROM table and the CoreSight identification blocks pyOCD discovers.

Every component answers its PIDR/CIDR block (0xFD0-0xFFF); CoreSight-class components (TPIU, ETM)
also DEVARCH/DEVID/DEVTYPE (0xFBC-0xFCC). The designer is Arm (JEP106 0x43B: id 0x3B with
continuation code 4).
"""

from __future__ import annotations

ROM_TABLE_BASE = 0xE00FF000
_ARM_JEP106_ID = 0x3B
_ARM_JEP106_CONT = 4
_CLASS_ROM, _CLASS_CORESIGHT, _CLASS_GENERIC = 0x1, 0x9, 0xE

# base address -> (component class, part number, DEVTYPE)
COMPONENTS: dict[int, tuple[int, int, int]] = {
    ROM_TABLE_BASE: (_CLASS_ROM, 0x4C4, 0),
    0xE000E000: (_CLASS_GENERIC, 0x00C, 0),  # SCS: its presence is what creates the core
    0xE0001000: (_CLASS_GENERIC, 0x002, 0),  # DWT
    0xE0002000: (_CLASS_GENERIC, 0x003, 0),  # FPB
    0xE0000000: (_CLASS_GENERIC, 0x001, 0),  # ITM
    0xE0040000: (_CLASS_CORESIGHT, 0x9A1, 0x11),  # TPIU
    0xE0041000: (_CLASS_CORESIGHT, 0x925, 0x13),  # ETM
}
_ROM_ENTRY_ORDER = (0xE000E000, 0xE0001000, 0xE0002000, 0xE0000000, 0xE0040000, 0xE0041000)


def _id_block(component_class: int, part: int, devtype: int) -> dict[int, int]:
    block = {
        0xFD0: _ARM_JEP106_CONT,  # PIDR4: JEP106 continuation code, 4 KiB block
        0xFE0: part & 0xFF,  # PIDR0
        0xFE4: ((_ARM_JEP106_ID & 0xF) << 4) | (part >> 8),  # PIDR1
        0xFE8: 0x08 | (_ARM_JEP106_ID >> 4),  # PIDR2: JEDEC-assigned id used
        0xFF0: 0x0D,  # CIDR0..3: preamble 0xB105_000D with the class in CIDR1
        0xFF4: component_class << 4,
        0xFF8: 0x05,
        0xFFC: 0xB1,
    }
    if component_class == _CLASS_CORESIGHT:
        block[0xFCC] = devtype
    if component_class == _CLASS_ROM:
        block[0xFCC] = 1  # MEMTYPE: system memory is present on the bus
        for index, base in enumerate(_ROM_ENTRY_ORDER):
            block[4 * index] = ((base - ROM_TABLE_BASE) & 0xFFFFF000) | 0x3  # present, 32-bit
    return block


def identification_registers() -> dict[int, int]:
    """Every ROM-table entry and ID register, by absolute address (read-only)."""
    registers: dict[int, int] = {}
    for base, (component_class, part, devtype) in COMPONENTS.items():
        for offset, value in _id_block(component_class, part, devtype).items():
            registers[base + offset] = value
    return registers
