"""The station's side of the plant signing service: ask, with the station's own certificate.

The station holds no signing key. It sends the digest of a unit's factory data, bound to job,
serial and chip uid, and gets back a signature, the key reference and a signature id. A refusal
becomes the unit's ``signing_refused`` failure, a service that cannot be reached (or answers
nonsense) within ``timeout_s`` its ``signer_unreachable`` failure; either way nothing is written.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import TypeVar

import httpx
from pydantic import ValidationError

from agent.config import StationConfig
from agent.errors import FailureCode, UnitFailure
from agent.wire.messages_base import Wire
from agent.wire.signing import (
    CERTIFY_PATH,
    SIGN_PATH,
    CertifyRequest,
    CertifyResponse,
    SignRefusal,
    SignRequest,
    SignResponse,
)

A = TypeVar("A", bound=Wire)


def client_tls(*, ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    """Trust only the plant CA for the service; present the station certificate."""
    context = ssl.create_default_context(cafile=str(ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert), str(key))
    return context


class SignerClient:
    """One HTTPS client (connections kept alive between units); close with :meth:`aclose`."""

    def __init__(self, *, url: str, tls: ssl.SSLContext, timeout_s: float) -> None:
        self._base = url.rstrip("/")
        self._client = httpx.AsyncClient(verify=tls, timeout=timeout_s)
        self.timeout_s = timeout_s

    @classmethod
    def from_config(cls, config: StationConfig) -> SignerClient | None:
        """The client of the configured service, or None when the station has none."""
        identity = config.signer_identity()
        if config.signer is None or identity is None:
            return None
        cert, key = identity
        return cls(url=config.signer.url, timeout_s=config.signer.timeout_s,
                   tls=client_tls(ca=config.signer.ca, cert=cert, key=key))

    async def aclose(self) -> None:
        """Close the connections."""
        await self._client.aclose()

    async def sign(self, request: SignRequest, *, stage: str = "sign") -> SignResponse:
        """The service's signature, or UnitFailure (signing_refused / signer_unreachable)."""
        return await self._ask(SIGN_PATH, request, SignResponse, stage=stage)

    async def certify(self, request: CertifyRequest, *, stage: str = "sign") -> CertifyResponse:
        """A certificate for the part's key, or UnitFailure (as :meth:`sign`)."""
        return await self._ask(CERTIFY_PATH, request, CertifyResponse, stage=stage)

    async def _ask(self, path: str, request: Wire, answer_model: type[A], *, stage: str) -> A:
        try:
            async with asyncio.timeout(self.timeout_s):  # httpx's timeout is per phase
                answer = await self._client.post(
                    self._base + path, content=request.model_dump_json(by_alias=True),
                    headers={"content-type": "application/json"})
        except (TimeoutError, httpx.TimeoutException):
            raise _unreachable(stage, f"no answer within {self.timeout_s:g} s") from None
        except httpx.HTTPError as exc:
            raise _unreachable(stage, f"{type(exc).__name__}: {exc}") from None
        try:
            if answer.status_code == 200:
                return answer_model.model_validate_json(answer.content)
            refusal = SignRefusal.model_validate_json(answer.content)
        except ValidationError:
            raise _unreachable(stage, f"the service answered HTTP {answer.status_code} with "
                                      "something that is no signing answer") from None
        raise UnitFailure(code=FailureCode.SIGNING_REFUSED, stage=stage,
                          detail=f"{refusal.code}: {refusal.reason}", region="manufacturing")


def _unreachable(stage: str, why: str) -> UnitFailure:
    return UnitFailure(code=FailureCode.SIGNER_UNREACHABLE, stage=stage,
                       detail=f"signing service unreachable: {why}", region="manufacturing")
