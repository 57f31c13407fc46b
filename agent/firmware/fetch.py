"""Moving one image's bytes from its URL into a sink, refusing anything the manifest did not say.

Only ``https://`` (TLS verified against the configured CA bundle) and ``file://`` (offline media)
are read; ``http://`` is refused. Redirects are followed by hand, at most ``max_redirects`` hops
and only to ``https://`` (CDNs and artifact stores redirect to signed URLs; a hop to plain http
would hand the download to anyone on the path). The body is read raw (``Accept-Encoding:
identity``), never more than the declared size plus one byte, whatever Content-Length says; the
sink hashes while it writes. Transport errors become :class:`ImageError` codes here.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urljoin, urlsplit
from urllib.request import url2pathname

import httpx

from agent.firmware.reasons import ImageError, Reason
from agent.wire.messages import ImageSpec

CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True)
class FetchPolicy:
    """How images are downloaded; the defaults suit a plant LAN."""

    ca_bundle: Path | None = None
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0
    attempt_timeout_s: float = 600.0
    attempts: int = 4
    backoff_min_s: float = 0.5
    backoff_max_s: float = 30.0
    max_redirects: int = 3


class Sink(Protocol):
    """Receives an image's bytes; raises ImageError as soon as they exceed the declared size."""

    def feed(self, chunk: bytes) -> None:
        """Take the next chunk."""
        ...


def tls_context(policy: FetchPolicy) -> ssl.SSLContext:
    """Certificate and host-name verification on, TLS 1.2 at least, the configured CAs."""
    cafile = str(policy.ca_bundle) if policy.ca_bundle is not None else None
    context = ssl.create_default_context(cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def new_client(policy: FetchPolicy) -> httpx.AsyncClient:
    """An HTTP client that verifies TLS, follows no redirect by itself and ignores env proxies."""
    timeout = httpx.Timeout(policy.read_timeout_s, connect=policy.connect_timeout_s)
    return httpx.AsyncClient(
        verify=tls_context(policy), follow_redirects=False, trust_env=False, timeout=timeout
    )


def scheme_of(url: str) -> str:
    """The URL's scheme, lower case."""
    return urlsplit(url).scheme.lower()


def check_url(spec: ImageSpec, set_id: str) -> None:
    """Refuse every scheme but https and file before any connection is made."""
    scheme = scheme_of(spec.url)
    if scheme not in ("https", "file"):
        raise ImageError(Reason.INSECURE_URL, "only https:// and file:// URLs are allowed",
                         image=spec.name, set_id=set_id, expected="https or file",
                         found=scheme or "no scheme")


def read_file_url(spec: ImageSpec, sink: Sink, set_id: str) -> None:
    """Copy a ``file://`` image into ``sink`` (blocking: run it in a thread)."""
    parts = urlsplit(spec.url)
    if parts.netloc not in ("", "localhost"):
        raise ImageError(Reason.INSECURE_URL, "file:// URLs must name a local path",
                         image=spec.name, set_id=set_id, expected="file:///path",
                         found=parts.netloc)
    path = Path(url2pathname(unquote(parts.path)))
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK_BYTES):
                sink.feed(chunk)
    except OSError as exc:
        raise ImageError(Reason.FILE_ERROR, f"cannot read {path}: {exc.strerror}",
                         image=spec.name, set_id=set_id) from None


async def download_https(
    client: httpx.AsyncClient, spec: ImageSpec, sink: Sink, *, policy: FetchPolicy, set_id: str
) -> None:
    """Stream an ``https://`` image into ``sink``, following only https redirects."""
    url = spec.url
    for _ in range(policy.max_redirects + 1):
        try:
            next_url = await _get_once(client, url, spec, sink, set_id)
        except httpx.HTTPError as exc:
            raise _transport_error(exc, spec, set_id) from None
        if next_url is None:
            return
        if scheme_of(next_url) != "https":
            raise ImageError(Reason.INSECURE_REDIRECT, "redirected away from https",
                             image=spec.name, set_id=set_id, expected="https",
                             found=next_url[:200])
        url = next_url
    raise ImageError(Reason.TOO_MANY_REDIRECTS, "too many redirects", image=spec.name,
                     set_id=set_id, expected=f"at most {policy.max_redirects}", found=url[:200])


async def _get_once(
    client: httpx.AsyncClient, url: str, spec: ImageSpec, sink: Sink, set_id: str
) -> str | None:
    """One GET: the redirect target, or None once the body went into ``sink``."""
    headers = {"Accept-Encoding": "identity"}
    async with client.stream("GET", url, headers=headers) as response:
        if response.is_redirect and "location" in response.headers:
            return urljoin(url, response.headers["location"])
        if response.status_code != httpx.codes.OK:
            raise ImageError(Reason.HTTP_STATUS, f"GET {url[:200]} answered "
                             f"{response.status_code}", image=spec.name, set_id=set_id,
                             expected="200", found=str(response.status_code))
        declared = response.headers.get("content-length")
        if declared is not None and declared.strip() != str(spec.size):
            raise ImageError(Reason.LENGTH_MISMATCH, "Content-Length disagrees with the "
                             "manifest", image=spec.name, set_id=set_id,
                             expected=str(spec.size), found=declared[:40])
        async for chunk in response.aiter_raw(CHUNK_BYTES):
            sink.feed(chunk)
    return None


def _transport_error(exc: httpx.HTTPError, spec: ImageSpec, set_id: str) -> ImageError:
    """Name a transport failure: TLS problems are not retried, the rest may be."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            return ImageError(Reason.TLS_ERROR, f"TLS: {cause}", image=spec.name, set_id=set_id)
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, httpx.RemoteProtocolError):
        return ImageError(Reason.TRUNCATED, f"the server broke off: {exc}", image=spec.name,
                          set_id=set_id)
    return ImageError(Reason.DOWNLOAD_FAILED, f"{type(exc).__name__}: {exc}",
                      image=spec.name, set_id=set_id)
