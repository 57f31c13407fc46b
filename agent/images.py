"""Image bytes for a firmware set, checked against the set before anything touches a board.

Each image must be exactly its declared size and hash; a file that differs is refused here, with the
image's name, so a job whose images do not match its set is rejected instead of programmed.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from urllib.parse import unquote, urlparse

from agent.errors import FirmwareSetError
from agent.messages import FirmwareSet, ImageSpec


def _read_local(spec: ImageSpec, set_id: str) -> bytes:
    parsed = urlparse(spec.url)
    if parsed.scheme != "file":
        raise FirmwareSetError("unsupported_url",
                               f"image {spec.name}: only file:// URLs are read locally, "
                               f"found {parsed.scheme}://", set_id=set_id)
    path = Path(unquote(parsed.path))
    try:
        with path.open("rb") as handle:
            data = handle.read(spec.size + 1)  # never more than one byte past the declared size
    except OSError as exc:
        raise FirmwareSetError("image_unreadable", f"image {spec.name}: {exc}",
                               set_id=set_id) from None
    if len(data) != spec.size:
        raise FirmwareSetError("image_size_mismatch",
                               f"image {spec.name}: declared {spec.size} bytes, file has "
                               f"{'more' if len(data) > spec.size else len(data)}", set_id=set_id)
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec.sha256:
        raise FirmwareSetError("image_hash_mismatch",
                               f"image {spec.name}: sha256 {digest}, the set says {spec.sha256}",
                               set_id=set_id)
    return data


class LocalImages:
    """Verified image bytes by SHA-256, so accepting a job and running it read each file once.

    Keeps the images of the two most recent sets (the running one and the one before it).
    """

    def __init__(self) -> None:
        self._by_set: dict[str, dict[str, bytes]] = {}

    async def load(self, firmware_set: FirmwareSet) -> dict[str, bytes]:
        """Every image of ``firmware_set`` by name, each verified by size and SHA-256."""
        key = manifest_digest(firmware_set)
        cached = self._by_set.get(key)
        if cached is not None:
            return cached
        images = {
            spec.name: await asyncio.to_thread(_read_local, spec, firmware_set.set_id)
            for spec in firmware_set.images
        }
        self._by_set[key] = images
        while len(self._by_set) > 2:
            del self._by_set[next(iter(self._by_set))]
        return images


def manifest_digest(firmware_set: FirmwareSet) -> str:
    """SHA-256 over the set's canonical JSON form (RFC 8785), as recorded per unit."""
    import rfc8785

    canonical = rfc8785.dumps(firmware_set.model_dump(mode="json", by_alias=True))
    return hashlib.sha256(canonical).hexdigest()
