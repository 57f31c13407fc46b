"""The station's image cache: content-addressed, written atomically, pruned to what rollout needs.

``ROOT/sha256/<hex>`` holds an image only after its length and SHA-256 matched the manifest that
named it; bytes arrive in ``ROOT/tmp/`` first and are fsynced and renamed into place after the
check, so no unverified file ever carries a final name. The hash binds an image to its set: an
image of another set, a truncated file or an HTML error page served with 200 all fail the check.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import tempfile
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import httpx

from agent.firmware.atomic import fsync_dir
from agent.firmware.fetch import (
    FetchPolicy,
    check_url,
    download_https,
    new_client,
    read_file_url,
    scheme_of,
)
from agent.firmware.reasons import ImageError, Reason
from agent.wire.messages import ImageSpec

Sleep = Callable[[float], Coroutine[Any, Any, None]]


class _Receiver:
    """A temporary file that counts and hashes what it is fed and refuses excess at once."""

    def __init__(self, handle: BinaryIO, spec: ImageSpec, set_id: str) -> None:
        self._handle = handle
        self._spec = spec
        self._set_id = set_id
        self._hash = hashlib.sha256()
        self.size = 0

    def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self._spec.size:
            raise ImageError(Reason.TOO_LARGE, "more bytes than declared", image=self._spec.name,
                             set_id=self._set_id, expected=str(self._spec.size),
                             found=f"more than {self._spec.size}")
        self._hash.update(chunk)
        self._handle.write(chunk)  # into the page cache; the one slow call, fsync, is threaded

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


class ImageStore:
    """Fetches images into the cache and hands out verified paths or bytes.

    Use as an async context manager (it owns an HTTP client unless one is given).
    ``sleep`` is injectable so tests of the backoff do not wait.
    """

    def __init__(
        self,
        root: Path,
        *,
        policy: FetchPolicy | None = None,
        client: httpx.AsyncClient | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.root = root
        self.policy = policy or FetchPolicy()
        self._client = client
        self._own_client = client is None
        self._sleep = sleep
        self._known: dict[str, str] = {}  # sha256 -> "set/image", for mix-and-match reports
        self._blobs = root / "sha256"
        self._tmp = root / "tmp"

    async def __aenter__(self) -> ImageStore:
        await asyncio.to_thread(_prepare, self._blobs, self._tmp)
        if self._client is None:
            self._client = new_client(self.policy)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._own_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    def path_for(self, spec: ImageSpec) -> Path:
        """Where the verified image lives (whether or not it is there yet)."""
        return self._blobs / spec.sha256

    def register(self, set_id: str, images: Iterable[ImageSpec]) -> None:
        """Remember which set each hash belongs to, to name a mixed-up image precisely."""
        for spec in images:
            self._known.setdefault(spec.sha256, f"{set_id}/{spec.name}")

    async def fetch(self, spec: ImageSpec, *, set_id: str) -> Path:
        """The verified image in the cache, downloading it (with retries) when needed."""
        check_url(spec, set_id)
        path = self.path_for(spec)
        if await asyncio.to_thread(_matches, path, spec):
            return path
        for attempt in range(1, self.policy.attempts + 1):
            try:
                await self._fetch_once(spec, set_id)
                return path
            except ImageError as exc:
                if not exc.retryable or attempt == self.policy.attempts:
                    raise
            await self._sleep(self._backoff(attempt))
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def read_verified(self, spec: ImageSpec, *, set_id: str) -> bytes:
        """The image's bytes from the cache, checked again (SD cards do lose bits)."""
        try:
            data = await asyncio.to_thread(self.path_for(spec).read_bytes)
        except FileNotFoundError:
            raise ImageError(Reason.CACHE_MISSING, "not in the image cache", image=spec.name,
                             set_id=set_id) from None
        found = hashlib.sha256(data).hexdigest()
        if len(data) != spec.size or found != spec.sha256:
            raise ImageError(Reason.HASH_MISMATCH, "the cached copy changed", image=spec.name,
                             set_id=set_id, expected=spec.sha256, found=found)
        return data

    async def retain(self, keep: Iterable[str]) -> list[str]:
        """Delete every cached image whose hash is not in ``keep``; returns what went."""
        return await asyncio.to_thread(_evict, self._blobs, set(keep))

    def _backoff(self, attempt: int) -> float:
        """Capped exponential backoff with jitter, so a fleet does not retry in step."""
        ceiling = min(self.policy.backoff_max_s, self.policy.backoff_min_s * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)

    async def _fetch_once(self, spec: ImageSpec, set_id: str) -> None:
        """One attempt: temp file, stream and hash, verify, fsync, rename into place."""
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp, prefix=f"{spec.sha256[:16]}.")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as handle:
                receiver = _Receiver(handle, spec, set_id)
                async with asyncio.timeout(self.policy.attempt_timeout_s):
                    await self._transfer(spec, receiver, set_id)
                self._check(spec, receiver, set_id)
                handle.flush()
                await asyncio.to_thread(os.fsync, handle.fileno())
            await asyncio.to_thread(_publish, tmp, self.path_for(spec))
        except TimeoutError:
            raise ImageError(Reason.DOWNLOAD_FAILED, "the download took too long",
                             image=spec.name, set_id=set_id,
                             expected=f"under {self.policy.attempt_timeout_s} s") from None
        except OSError as exc:  # the cache's own disk: full, read-only, failing
            raise ImageError(Reason.STORAGE_ERROR, f"cannot write the cache: {exc}",
                             image=spec.name, set_id=set_id) from None
        finally:
            _discard(tmp)  # a no-op after the rename; removes a refused or broken download

    async def _transfer(self, spec: ImageSpec, receiver: _Receiver, set_id: str) -> None:
        if scheme_of(spec.url) == "file":
            await asyncio.to_thread(read_file_url, spec, receiver, set_id)
            return
        if self._client is None:
            raise RuntimeError("ImageStore is used outside 'async with'")
        await download_https(self._client, spec, receiver, policy=self.policy, set_id=set_id)

    def _check(self, spec: ImageSpec, receiver: _Receiver, set_id: str) -> None:
        """Length first (a short body), then the hash (wrong content, another set's image)."""
        if receiver.size < spec.size:
            raise ImageError(Reason.TRUNCATED, "fewer bytes than declared", image=spec.name,
                             set_id=set_id, expected=str(spec.size), found=str(receiver.size))
        found = receiver.hexdigest()
        if found == spec.sha256:
            return
        owner = self._known.get(found)
        if owner is not None:
            raise ImageError(Reason.IMAGE_FROM_OTHER_SET, f"the bytes are image {owner}",
                             image=spec.name, set_id=set_id, expected=spec.sha256, found=found)
        raise ImageError(Reason.HASH_MISMATCH, "SHA-256 differs from the manifest",
                         image=spec.name, set_id=set_id, expected=spec.sha256, found=found)


def _prepare(blobs: Path, tmp: Path) -> None:
    """Create the cache folders and drop downloads an earlier run left half done."""
    blobs.mkdir(parents=True, exist_ok=True)
    tmp.mkdir(parents=True, exist_ok=True)
    for leftover in tmp.iterdir():
        leftover.unlink(missing_ok=True)


def _evict(blobs: Path, wanted: set[str]) -> list[str]:
    gone = sorted(p.name for p in blobs.iterdir() if p.name not in wanted)
    for name in gone:
        (blobs / name).unlink(missing_ok=True)
    if gone:
        fsync_dir(blobs)
    return gone


def _discard(path: Path) -> None:
    path.unlink(missing_ok=True)


def _publish(tmp: Path, final: Path) -> None:
    """Rename the verified temp file to its final name, durably."""
    os.replace(tmp, final)
    fsync_dir(final.parent)


def _matches(path: Path, spec: ImageSpec) -> bool:
    """Whether a cached file is present and still exactly the image (a blocking re-hash)."""
    try:
        if path.stat().st_size != spec.size:
            path.unlink()
            return False
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(1024 * 1024):
                digest.update(chunk)
    except FileNotFoundError:
        return False
    if digest.hexdigest() != spec.sha256:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return False
    return True
