"""Why a firmware set or one of its images was refused: stable reason codes and error classes.

The codes are strings the plant's dashboards group on; ``docs/firmware-sets.md`` lists them.
"""

from __future__ import annotations

from enum import StrEnum

from agent.errors import FirmwareSetError


class Reason(StrEnum):
    """Reason codes carried by :class:`~agent.errors.FirmwareSetError` from this package."""

    # the envelope and the signatures (checked before the manifest is interpreted)
    MALFORMED = "malformed"
    UNSIGNED = "unsigned"
    UNKNOWN_KEY = "unknown_key"
    REVOKED_KEY = "revoked_key"
    EXPIRED_KEY = "expired_key"
    ALG_MISMATCH = "alg_mismatch"
    BAD_SIGNATURE = "bad_signature"
    THRESHOLD = "threshold_not_met"
    # the manifest, once its signature holds
    INVALID_MANIFEST = "invalid_manifest"
    NOT_YET_VALID = "not_yet_valid"
    EXPIRED = "expired"
    ROLLBACK = "rollback"
    SEQUENCE_CONFLICT = "sequence_conflict"
    # images
    INSECURE_URL = "insecure_url"
    INSECURE_REDIRECT = "insecure_redirect"
    TOO_MANY_REDIRECTS = "too_many_redirects"
    TLS_ERROR = "tls_error"
    HTTP_STATUS = "http_status"
    LENGTH_MISMATCH = "length_mismatch"
    TOO_LARGE = "too_large"
    TRUNCATED = "truncated"
    HASH_MISMATCH = "hash_mismatch"
    IMAGE_FROM_OTHER_SET = "image_from_other_set"
    DOWNLOAD_FAILED = "download_failed"
    FILE_ERROR = "file_error"
    # rollout
    SUPERSEDED = "superseded"
    NO_PREVIOUS = "no_previous"
    CACHE_MISSING = "cache_missing"
    STORAGE_ERROR = "storage_error"


# Image failures worth another attempt: the next try may well succeed. Everything else is either
# an attack or a publishing mistake, and retrying the same URL cannot fix it.
RETRYABLE: frozenset[str] = frozenset(
    {Reason.HTTP_STATUS, Reason.TRUNCATED, Reason.DOWNLOAD_FAILED}
)


def refuse(code: Reason, reason: str, *, set_id: str | None = None) -> FirmwareSetError:
    """A :class:`FirmwareSetError` with one of our codes (``raise refuse(...)``)."""
    return FirmwareSetError(str(code), reason, set_id=set_id)


class ImageError(FirmwareSetError):
    """One image could not be fetched or did not match its manifest entry.

    ``expected`` and ``found`` hold the compared values (hash, size, scheme, status) when the
    failure is a comparison, so the operator reads both without digging in logs.
    """

    def __init__(
        self,
        code: Reason,
        reason: str,
        *,
        image: str,
        set_id: str | None = None,
        expected: str | None = None,
        found: str | None = None,
    ) -> None:
        self.image = image
        self.expected = expected
        self.found = found
        detail = f"image {image}: {reason}"
        if expected is not None or found is not None:
            detail += f" (expected {expected}, found {found})"
        super().__init__(str(code), detail, set_id=set_id)

    @property
    def retryable(self) -> bool:
        """Whether another download attempt could succeed."""
        return self.code in RETRYABLE
