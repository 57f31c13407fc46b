"""The image store against a real HTTPS server on loopback with a CA made by the test."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.firmware.fetch import FetchPolicy
from agent.firmware.imagestore import ImageStore
from agent.firmware.reasons import ImageError
from agent.wire.messages import ImageSpec
from tests.firmware_https import ImageServer, LoopbackCA, serve
from tests.firmware_support import image_bytes

APP = image_bytes("app", 200_000)
OTHER = image_bytes("other-set-app", 200_000)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[LoopbackCA, Path]:
    folder = tmp_path_factory.mktemp("pki")
    ca = LoopbackCA.create()
    (folder / "ca.pem").write_bytes(ca.pem())
    return ca, folder


@pytest.fixture(scope="module")
def server(pki: tuple[LoopbackCA, Path]) -> Iterator[ImageServer]:
    ca, folder = pki
    cert, key = ca.issue(folder, dns=["localhost"], ips=["127.0.0.1"])
    yield from serve(cert, key, ImageServer(images={"app": APP, "other": OTHER}))


@pytest.fixture(scope="module")
def wrong_host(pki: tuple[LoopbackCA, Path]) -> Iterator[ImageServer]:
    ca, folder = pki
    cert, key = ca.issue(folder, dns=["wrong.example"], ips=[])
    yield from serve(cert, key, ImageServer(images={"app": APP}))


def spec(url: str, data: bytes = APP, name: str = "app") -> ImageSpec:
    return ImageSpec(name=name, role="application", address=0x1000, size=len(data),
                     sha256=hashlib.sha256(data).hexdigest(), version="1", url=url,
                     key_ref="hsm:app")


async def no_sleep(_: float) -> None:
    return None


def store(tmp_path: Path, pki: tuple[LoopbackCA, Path], **policy: object) -> ImageStore:
    return ImageStore(tmp_path / "images",
                      policy=FetchPolicy(ca_bundle=pki[1] / "ca.pem", **policy),  # type: ignore[arg-type]
                      sleep=no_sleep)


async def refused(images: ImageStore, image: ImageSpec) -> ImageError:
    with pytest.raises(ImageError) as info:
        await images.fetch(image, set_id="set-b")
    blobs = images.root / "sha256"
    assert not (blobs / image.sha256).exists(), "nothing unverified under a final name"
    assert list((images.root / "tmp").iterdir()) == []
    return info.value


async def test_a_good_image_lands_in_the_cache(tmp_path: Path, pki, server: ImageServer) -> None:
    async with store(tmp_path, pki) as images:
        path = await images.fetch(spec(server.url("/img/app")), set_id="set-a")
        assert path.read_bytes() == APP
        assert path.name == hashlib.sha256(APP).hexdigest()
        assert await images.read_verified(spec(server.url("/img/app")), set_id="set-a") == APP


async def test_https_to_https_redirects_are_followed(tmp_path: Path, pki, server) -> None:
    async with store(tmp_path, pki) as images:
        path = await images.fetch(spec(server.url("/to-https/app")), set_id="set-a")
        assert path.read_bytes() == APP


@pytest.mark.parametrize(
    ("route", "code"),
    [
        ("/short/app", "truncated"),
        ("/long-header/app", "length_mismatch"),
        ("/endless", "too_large"),
        ("/html/app", "hash_mismatch"),
        ("/to-http/app", "insecure_redirect"),
        ("/loop", "too_many_redirects"),
        ("/missing", "http_status"),
    ],
)
async def test_bad_downloads_are_refused_with_their_reason(
    tmp_path: Path, pki, server: ImageServer, route: str, code: str
) -> None:
    async with store(tmp_path, pki, attempts=2) as images:
        error = await refused(images, spec(server.url(route)))
    assert error.code == code
    assert error.image == "app"
    assert error.set_id == "set-b"


async def test_an_image_from_another_set_is_named(tmp_path: Path, pki, server) -> None:
    ours = spec(server.url("/img/other"))  # set B's entry says APP, the URL serves set A's
    async with store(tmp_path, pki) as images:
        error = await refused(images, ours)
        assert error.code == "hash_mismatch"
        images.register("set-a", [spec(server.url("/img/other"), OTHER)])
        error = await refused(images, ours)
    assert error.code == "image_from_other_set"
    assert error.found == hashlib.sha256(OTHER).hexdigest()
    assert error.expected == ours.sha256


async def test_a_wrong_tls_host_name(tmp_path: Path, pki, wrong_host: ImageServer) -> None:
    async with store(tmp_path, pki) as images:
        error = await refused(images, spec(wrong_host.url("/img/app")))
    assert error.code == "tls_error"
    assert "hostname" in error.reason.lower() or "ip address" in error.reason.lower()


async def test_an_unknown_ca_is_a_tls_error(tmp_path: Path, server) -> None:
    other_ca = tmp_path / "other-ca.pem"
    other_ca.write_bytes(LoopbackCA.create().pem())
    images = ImageStore(tmp_path / "images", policy=FetchPolicy(ca_bundle=other_ca))
    async with images:
        error = await refused(images, spec(server.url("/img/app")))
    assert error.code == "tls_error"


async def test_plain_http_is_never_fetched(tmp_path: Path, pki) -> None:
    async with store(tmp_path, pki) as images:
        error = await refused(images, spec("http://127.0.0.1:9/img/app"))
        assert error.code == "insecure_url"
        error = await refused(images, spec("ftp://example.invalid/app"))
        assert error.code == "insecure_url"


async def test_transient_errors_are_retried_with_backoff(tmp_path: Path, pki, server) -> None:
    delays: list[float] = []

    async def record(delay: float) -> None:
        delays.append(delay)

    images = ImageStore(tmp_path / "images", sleep=record,
                        policy=FetchPolicy(ca_bundle=pki[1] / "ca.pem", backoff_min_s=1.0))
    async with images:
        path = await images.fetch(spec(server.url("/flaky/app")), set_id="set-a")
    assert path.read_bytes() == APP
    assert len(delays) == 2
    assert 0.5 <= delays[0] <= 1.0
    assert 1.0 <= delays[1] <= 2.0


async def test_file_urls_and_the_cache(tmp_path: Path, pki) -> None:
    media = tmp_path / "usb" / "app image.bin"
    media.parent.mkdir()
    media.write_bytes(APP)
    image = spec(media.as_uri())
    async with store(tmp_path, pki) as images:
        path = await images.fetch(image, set_id="set-a")
        media.unlink()  # served from the cache from now on
        assert await images.fetch(image, set_id="set-a") == path
        path.write_bytes(b"x" + APP[1:])  # the SD card lost a bit
        with pytest.raises(ImageError) as info:
            await images.read_verified(image, set_id="set-a")
        assert info.value.code == "hash_mismatch"
        with pytest.raises(ImageError) as info:
            await images.fetch(image, set_id="set-a")  # the bad copy is dropped, refetch fails
        assert info.value.code == "file_error"


async def test_eviction_keeps_only_what_it_is_told(tmp_path: Path, pki) -> None:
    async with store(tmp_path, pki) as images:
        kept = []
        for tag in ("a", "b", "c"):
            data = image_bytes(tag, 1000)
            source = tmp_path / tag
            source.write_bytes(data)
            kept.append(await images.fetch(spec(source.as_uri(), data), set_id=tag))
        gone = await images.retain([kept[1].name, kept[2].name])
    assert gone == [kept[0].name]
    assert [p.exists() for p in kept] == [False, True, True]


SMALL = image_bytes("hypothesis", 512)


@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.integers(0, len(SMALL) - 1), flip=st.integers(1, 255))
async def test_any_single_byte_change_to_an_image_is_refused(
    tmp_path: Path, position: int, flip: int
) -> None:
    changed = bytearray(SMALL)
    changed[position] ^= flip
    source = tmp_path / f"img-{position}-{flip}"
    source.write_bytes(bytes(changed))
    images = ImageStore(tmp_path / "cache")
    async with images:
        error = await refused(images, spec(source.as_uri(), SMALL))
    assert error.code == "hash_mismatch"
