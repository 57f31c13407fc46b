"""Boards back from rework: read each region once, write only what differs.

A part whose valid flag already holds the firmware set's value was programmed to the end before.
For such a part, every image region is read first; a region whose read-back SHA-256 already equals
the image's is not written again, and that one read is its verification (the same evidence a read
after a write gives). A region that differs is written and read back as on a blank part. A blank
part (flag erased) goes straight to writing: reading first would only cost it a read.

Per-unit regions (the manufacturing partition) change with every unit and are always written.
"""

from __future__ import annotations

import hashlib

from agent.hw.programmer import Programmer, Region, ValidFlag

ALWAYS_WRITTEN_ROLES = frozenset({"manufacturing"})


async def programmed_before(programmer: Programmer, flag: ValidFlag) -> bool:
    """True when the part's valid flag already says "valid" (read before it is invalidated)."""
    word = await programmer.read(Region("valid-flag", flag.address, 4))
    return word == flag.value.to_bytes(4, "little")


async def region_digest(programmer: Programmer, region: Region) -> str:
    """SHA-256 (hex) of one read of the region."""
    return hashlib.sha256(await programmer.read(region)).hexdigest()
