"""The one exception root of apex-metrics, and the errors shared by every part.

    ApexMetricsError                 every error we raise; ``hint`` says what to do about it
    ├── ConfigError                  a setting is missing or invalid (names the env var)
    ├── MetricValidationError        bad input: lists (line, field, rule) for every problem
    ├── DatabaseError                PostgreSQL failed
    │   ├── DatabaseUnreachable      nothing answers at host:port (down, firewall, IP allow list)
    │   ├── DatabaseAuthFailed       wrong user or password
    │   ├── DatabaseMissing          the database does not exist
    │   └── SchemaNotMigrated        ``apex-metrics db migrate`` has not been run
    └── (part-specific roots: ``dataverse.errors.DataverseError``, ``spool.SpoolError``,
         ``sync`` and ``panel`` errors)

Each class carries a one-line docstring used as its default message. Driver errors are wrapped
at one boundary per part (``db.py`` for psycopg, ``dataverse/errors.py`` for httpx), keeping the
original as ``__cause__``. :func:`first_line` is the one way to shorten a foreign exception's
message for ours.
"""

from __future__ import annotations

from dataclasses import dataclass


class ApexMetricsError(Exception):
    """apex-metrics failed."""

    hint: str | None = None

    def __init__(self, message: str | None = None, *, hint: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())
        if hint is not None:
            self.hint = hint

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""

    def one_line(self) -> str:
        """The message and, when known, what to do about it, on one line."""
        return f"{self.message} ({self.hint})" if self.hint else self.message


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (driver messages often add DETAIL and HINT
    lines), or its type name when it has no message."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class ConfigError(ApexMetricsError):
    """A setting is missing or invalid."""


@dataclass(frozen=True, slots=True)
class FieldError:
    """One broken rule: which field, which rule, and where (line number in an input file)."""

    field: str
    rule: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        return f"{where}{self.field}: {self.rule}"


class MetricValidationError(ApexMetricsError):
    """The input breaks the data contract; nothing was written."""

    def __init__(self, errors: list[FieldError], *, limit: int = 50) -> None:
        self.errors = errors
        shown = "; ".join(str(e) for e in errors[:limit])
        more = f"; and {len(errors) - limit} more" if len(errors) > limit else ""
        super().__init__(f"invalid input: {shown}{more}")


class DatabaseError(ApexMetricsError):
    """PostgreSQL failed."""


class DatabaseUnreachable(DatabaseError):
    """PostgreSQL cannot be reached."""


class DatabaseAuthFailed(DatabaseError):
    """PostgreSQL refused the credentials."""


class DatabaseMissing(DatabaseError):
    """The PostgreSQL database does not exist."""


class SchemaNotMigrated(DatabaseError):
    """The apex-metrics schema is missing or out of date."""

    hint = "run `apex-metrics db migrate` first"
