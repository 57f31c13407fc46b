"""A misbehaving HTTPS image server on 127.0.0.1 with a CA made here (for the image-store tests).

Routes (``NAME`` is a registered image):
  /img/NAME            the image, honest headers
  /short/NAME          Content-Length says the declared size, half the body, then close
  /long-header/NAME    Content-Length twice the declared size
  /endless             200, no length, bytes until the client hangs up
  /html/NAME           200 with an HTML error page padded to the image's size
  /to-http/NAME        302 to http://
  /to-https/NAME       302 to /img/NAME on this server
  /loop                302 to itself
  /flaky/NAME          503 for the first two requests, then the image
  /missing             404
"""

from __future__ import annotations

import datetime as dt
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from agent.plant.pki import Authority, cert_pem, key_pem, new_key


@dataclass
class LoopbackCA:
    """A CA made here with the product's certificate code (:mod:`agent.plant.pki`)."""

    authority: Authority

    @classmethod
    def create(cls) -> LoopbackCA:
        return cls(Authority.create("fixture-agent test CA", days=1, now=dt.datetime.now(dt.UTC)))

    def pem(self) -> bytes:
        return cert_pem(self.authority.cert)

    def issue(self, folder: Path, *, dns: list[str], ips: list[str]) -> tuple[Path, Path]:
        """A server certificate and key for those names, written as PEM files."""
        key, now = new_key(), dt.datetime.now(dt.UTC)
        cert = self.authority.issue_server(dns=dns, ips=ips, key=key.public_key(), now=now,
                                           not_after=now + dt.timedelta(days=1))
        return _write(folder, (dns or ips)[0], cert, key)

    def issue_client(self, folder: Path, common_name: str) -> tuple[Path, Path]:
        """A client certificate whose CN is the MQTT identity (use_identity_as_username)."""
        key, now = new_key(), dt.datetime.now(dt.UTC)
        cert = self.authority.issue_client(common_name, key.public_key(), now=now,
                                           not_after=now + dt.timedelta(days=1))
        return _write(folder, common_name, cert, key)


def _write(folder: Path, name: str, cert: x509.Certificate,
           key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    stem = name.replace(".", "_")
    cert_path, key_path = folder / f"{stem}.crt", folder / f"{stem}.key"
    cert_path.write_bytes(cert_pem(cert))
    key_path.write_bytes(key_pem(key))
    return cert_path, key_path


@dataclass
class ImageServer:
    """State shared with the handler threads."""

    images: dict[str, bytes] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)
    port: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, route: str) -> str:
        return f"https://127.0.0.1:{self.port}{route}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: ImageServer

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the tests read the server's state, not its access log."""

    def _send(self, status: int, body: bytes, *, length: int | None = None,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        _, route, *rest = [*self.path.split("/", 2), ""]
        name = rest[0] if rest else ""
        with self.state.lock:
            self.state.hits[self.path] = self.state.hits.get(self.path, 0) + 1
            hits = self.state.hits[self.path]
        image = self.state.images.get(name, b"")
        if route == "img":
            self._send(200, image) if image else self._send(404, b"no")
        elif route == "short":
            self._send(200, image[: len(image) // 2], length=len(image))
            self.close_connection = True
        elif route == "long-header":
            self._send(200, image, length=2 * len(image))
            self.close_connection = True
        elif route == "endless":
            self._endless()
        elif route == "html":
            page = b"<html><body>502 Bad Gateway</body></html>"
            self._send(200, page.ljust(len(image), b" "))
        elif route == "to-http":
            self._send(302, b"", headers={"Location": f"http://127.0.0.1:{self.state.port}"
                                                     f"/img/{name}"})
        elif route == "to-https":
            self._send(302, b"", headers={"Location": f"/img/{name}"})
        elif route == "loop":
            self._send(302, b"", headers={"Location": "/loop"})
        elif route == "flaky":
            self._send(503, b"busy") if hits <= 2 else self._send(200, image)
        else:
            self._send(404, b"not here")

    def _endless(self) -> None:
        self.send_response(200)
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        chunk = b"\0" * 65536
        try:
            for _ in range(100_000):
                self.wfile.write(chunk)
        except OSError:
            return


def serve(cert: Path, key: Path, state: ImageServer) -> Iterator[ImageServer]:
    """Run the server in a thread for the duration of a fixture."""
    handler = type("Handler", (_Handler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, name="https-images", daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
