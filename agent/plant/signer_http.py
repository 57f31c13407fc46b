"""The signing service on HTTPS: who is asking is the station certificate the TLS layer checked.

The listener asks every client for a certificate and accepts only those the station CA signed
(the broker's station CA, ``fixture-agent plant pki``); a client without one, or with one from
another authority, fails the handshake and never reaches a handler. The certificate's CN is the
station id; a CN that is no station id (``plant-...``) is refused with ``not_a_station``.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from pydantic import ValidationError

from agent.plant.certify import Certifier
from agent.plant.pki import PkiError, check_station_id
from agent.plant.signer import Refused, SigningService
from agent.wire.messages_base import Wire
from agent.wire.signing import CERTIFY_PATH, SIGN_PATH, CertifyRequest, SignRefusal, SignRequest

log = logging.getLogger(__name__)
MAX_REQUEST_BYTES = 4096
STATUS = {"no_device_ca": 404, "bad_public_key": 400, "unknown_job": 404,
          "serial_outside_job": 409, "serial_bound_to_other_chip": 409, "quota_exhausted": 409,
          "bad_request": 400, "token_error": 503}


def server_tls(*, cert: Path, key: Path, client_ca: Path,
               client_crl: Path | None = None) -> ssl.SSLContext:
    """TLS 1.2+ with a required client certificate from ``client_ca`` (the station CA); with
    ``client_crl`` (the station CA's CRL, `plant pki`) a revoked station is refused too. The CRL
    is read at start: restart the service after a revocation, as the broker is."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(client_ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    if client_crl is not None:
        context.load_verify_locations(cafile=str(client_crl))
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    context.load_cert_chain(str(cert), str(key))
    return context


def _station_of(request: web.Request) -> str:
    transport = request.transport
    peer: Any = transport.get_extra_info("peercert") if transport is not None else None
    names = [value for rdn in (peer or {}).get("subject", ()) for key, value in rdn
             if key == "commonName"]
    if len(names) != 1:
        raise Refused("not_a_station", "the client certificate names no single station")
    try:
        check_station_id(names[0])
    except PkiError as exc:
        raise Refused("not_a_station", str(exc)) from None
    return str(names[0])


def _refusal(refusal: Refused) -> web.Response:
    body = SignRefusal(code=refusal.code, reason=refusal.reason)
    return web.Response(status=STATUS.get(refusal.code, 403), content_type="application/json",
                        text=body.model_dump_json(by_alias=True))


def make_app(service: SigningService, certifier: Certifier | None = None) -> web.Application:
    """The service's routes: factory-data signatures, and device certificates when a device
    intermediate is configured."""

    async def answer(request: web.Request, decide: Callable[[str, bytes], Awaitable[Wire]]
                     ) -> web.Response:
        try:
            response = await decide(_station_of(request), await request.read())
        except Refused as refusal:
            log.info("refused %s: %s", request.remote, refusal)
            return _refusal(refusal)
        return web.Response(content_type="application/json",
                            text=response.model_dump_json(by_alias=True))

    async def sign_body(station: str, raw: bytes) -> Wire:
        return await service.sign(_parse(SignRequest, raw), station=station)

    async def certify_body(station: str, raw: bytes) -> Wire:
        if certifier is None:
            raise Refused("no_device_ca", "this signing service issues no device certificates")
        return await certifier.certify(_parse(CertifyRequest, raw), station=station)

    async def sign(request: web.Request) -> web.Response:
        return await answer(request, sign_body)

    async def certify(request: web.Request) -> web.Response:
        return await answer(request, certify_body)

    app = web.Application(client_max_size=MAX_REQUEST_BYTES)
    app.router.add_post(SIGN_PATH, sign)
    app.router.add_post(CERTIFY_PATH, certify)
    return app


M = TypeVar("M", bound=Wire)


def _parse(model: type[M], raw: bytes) -> M:
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise Refused("bad_request", f"not a {model.__name__}: {exc.error_count()} "
                                     "problem(s)") from None


@contextlib.asynccontextmanager
async def serving(service: SigningService, *, host: str, port: int, tls: ssl.SSLContext,
                  certifier: Certifier | None = None) -> AsyncIterator[int]:
    """Serve until the block ends; yields the bound port (``port`` 0 picks a free one)."""
    runner = web.AppRunner(make_app(service, certifier), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, ssl_context=tls)
        await site.start()
        bound = runner.addresses[0][1]
        log.info("signing service on https://%s:%d%s", host, bound, SIGN_PATH)
        yield int(bound)
    finally:
        await runner.cleanup()
