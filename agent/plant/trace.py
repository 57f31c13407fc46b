"""The buyer's and auditor's questions of the record database: what shipped on a serial, and
which of a station's sequence numbers the plant has not received."""

from __future__ import annotations

import json
from typing import Any

import aiosqlite


async def find_by_serial(db: aiosqlite.Connection, serial: str) -> list[dict[str, Any]]:
    """Every record stored for ``serial``, oldest first, as decoded JSON."""
    async with db.execute("SELECT payload FROM records WHERE serial = ? ORDER BY finished_at",
                          (serial,)) as cursor:
        return [json.loads(row[0]) for row in await cursor.fetchall()]


async def missing_sequences(db: aiosqlite.Connection, station: str) -> list[int]:
    """Sequence numbers of ``station`` between 1 and its highest that the plant has not received."""
    async with db.execute("SELECT seq FROM records WHERE station = ? ORDER BY seq",
                          (station,)) as cursor:
        seen = [row[0] for row in await cursor.fetchall()]
    if not seen:
        return []
    return sorted(set(range(1, seen[-1] + 1)) - set(seen))


def format_trace(records: list[dict[str, Any]]) -> str:
    """A person's view of every record of one serial."""
    lines = []
    for r in records:
        verdict = r["outcome"].upper()
        if r.get("failure"):
            f = r["failure"]
            verdict += f" ({f['code']} at {f['stage']}: {f['detail']})"
        lines += [
            f"serial {r['serial']}: {verdict}, routed to {r['routing']}",
            f"  programmed {r['started_at']} .. {r['finished_at']} on station {r['station']} "
            f"slot {r['slot']} (record {r['record_id']}, seq {r['seq']})",
            f"  chip {r['chip_uid']}, job {r['job_id']}, product {r['product']}",
            f"  firmware set {r['firmware_set_id']} (manifest sha256 {r['manifest_digest']})",
            f"  locked: {r['locked']}, valid flag: {r['valid_flag_set']}, "
            f"agent {r['agent_version']}",
        ]
        for image in r["images"]:
            check = "verified" if image["verified"] else "NOT verified"
            lines.append(f"    {image['name']:<14} {image['version']:<16} "
                         f"sha256 {image['sha256']}  key {image['key_ref']}  "
                         f"@0x{image['address']:08X}+{image['size']}  {check}")
            if image.get("signature_id"):
                lines.append(f"    {'':<14} signature {image['signature_id']}")
        if (cert := r.get("device_certificate")) is not None:
            lines.append(f"  device certificate {cert['serial']} issued by {cert['issuer']} "
                         f"(key {cert['key_ref']})")
    return "\n".join(lines)
