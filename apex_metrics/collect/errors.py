"""Errors of the OTLP receiver, each with the HTTP status it answers with.

ApexMetricsError
└── CollectError              a request was refused (``status``: the HTTP answer)
    ├── BadRequestBody        400: the body cannot be decoded (not retried by exporters)
    ├── Unauthorized          401: APEX_INGEST_TOKEN is set and the bearer token is not it
    ├── ContentTooLarge       413: the body, or its gzip expansion, is over the limit
    ├── UnsupportedMediaType  415: not application/x-protobuf or application/json, or an
    │                         encoding other than gzip
    └── Unavailable           503: memory full or PostgreSQL down (exporters retry)
"""

from __future__ import annotations

from apex_metrics.exceptions import ApexMetricsError


class CollectError(ApexMetricsError):
    """The OTLP request was refused."""

    status: int = 400
    retry_after: int | None = None


class BadRequestBody(CollectError):
    """The request body cannot be decoded."""

    status = 400


class Unauthorized(CollectError):
    """A bearer token is required (APEX_INGEST_TOKEN)."""

    status = 401


class ContentTooLarge(CollectError):
    """The request body is too large."""

    status = 413


class UnsupportedMediaType(CollectError):
    """Unsupported content type or content encoding."""

    status = 415


class Unavailable(CollectError):
    """The collector cannot take this request now; retry later."""

    status = 503
    retry_after = 1
