"""Web API errors as Dataverse sends them: a status plus ``{"error": {"code", "message"}}``."""

from __future__ import annotations

from apex_metrics.exceptions import ApexMetricsError

# Dataverse error codes (hex strings, as in the Web API's JSON bodies).
UNKNOWN_PROPERTY = "0x80060888"  # also "Content-ID header not present", bad OData syntax
VALIDATION = "0x80044331"
NOT_FOUND = "0x80040217"
DUPLICATE_KEY = "0x80060892"
DUPLICATE_RECORD = "0x80040237"
KEY_NOT_DEFINED = "0x80060890"
KEY_NAME_EXISTS = "0x80060893"
KEY_ATTRIBUTES_EXIST = "0x80060894"
GENERIC = "0x80040216"
AGGREGATE_LIMIT = "0x8004E023"
NOT_A_MEMBER = "0x80072560"
TOKEN_EXPIRED = "0x8005F101"
TOO_MANY_REQUESTS = "0x80072322"
EXECUTION_TIME = "0x80072321"
CONCURRENCY = "0x80072326"
PRIVILEGE = "0x80040220"


class ApiError(Exception):
    """An error answer of the Web API."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}


def bad_request(message: str, code: str = UNKNOWN_PROPERTY) -> ApiError:
    return ApiError(400, code, message)


def unknown_property(name: str, type_name: str) -> ApiError:
    return ApiError(
        400,
        UNKNOWN_PROPERTY,
        f"Could not find a property named '{name}' on type 'Microsoft.Dynamics.CRM.{type_name}'.",
    )


def not_found(message: str) -> ApiError:
    return ApiError(404, NOT_FOUND, message)


def validation(message: str) -> ApiError:
    return ApiError(400, VALIDATION, f"A validation error occurred. {message}")


def method_not_allowed(method: str, path: str) -> ApiError:
    return ApiError(
        405, UNKNOWN_PROPERTY, f"The HTTP method '{method}' is not allowed on '{path}'."
    )


class EmulatorError(ApexMetricsError):
    """The emulator could not start."""
