"""What the emulator accepts and how it behaves: credentials, limits, faults, storage."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from apex_metrics.emulator.costs import CostModel

DEFAULT_TENANT_ID = "apex-local-tenant"
DEFAULT_CLIENT_ID = "apex-local-client"
DEFAULT_CLIENT_SECRET = "apex-local-secret"  # documented local credential


@dataclass(frozen=True, slots=True)
class ServiceLimits:
    """Service protection limits, Dataverse's defaults, enforced per (application user, web
    server): each of the ``web_servers`` keeps its own windows, as the service's do."""

    requests_per_window: int = 6000
    window_seconds: float = 300.0
    execution_seconds_per_window: float = 1200.0
    concurrent_requests: int = 52
    # A caller that keeps sending while throttled waits longer: each such request adds
    # ``penalty_seconds * 2**strikes`` to its wait, up to ``max_retry_after`` (None: the
    # window, so that a scaled window scales the longest wait with it).
    penalty_seconds: float = 1.0
    max_retry_after: float | None = None
    # "Most environments have more than one web server"; a trial environment has one.
    web_servers: int = 2

    def __post_init__(self) -> None:
        for name in ("requests_per_window", "concurrent_requests", "web_servers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not self.window_seconds > 0:
            raise ValueError(f"window_seconds must be > 0, got {self.window_seconds}")
        for name in ("execution_seconds_per_window", "penalty_seconds"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_retry_after is not None and not self.max_retry_after >= 0:
            raise ValueError(f"max_retry_after must be >= 0, got {self.max_retry_after}")

    @property
    def longest_wait(self) -> float:
        """The longest ``Retry-After`` the penalty may reach."""
        return self.window_seconds if self.max_retry_after is None else self.max_retry_after

    @property
    def dop_hint(self) -> int:
        """``x-ms-dop-hint``: the emulator's choice (Microsoft gives no formula) of how many
        requests in flight the environment can serve without waiting, each of them busy all
        the time: the execution time every server may spend per second of wall clock."""
        per_second = self.execution_seconds_per_window / self.window_seconds
        return max(1, round(self.web_servers * per_second))

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["max_retry_after"] = self.longest_wait
        data["dop_hint"] = self.dop_hint
        return data


@dataclass(frozen=True, slots=True)
class FaultSettings:
    """Deterministic (seeded) fault injection on the Web API; all off by default."""

    seed: int = 0
    error_500_rate: float = 0.0
    error_503_rate: float = 0.0
    throttle_rate: float = 0.0  # probability of a 429 with Retry-After
    drop_rate: float = 0.0  # probability of processing the request, then dropping the connection
    latency_ms: float = 0.0  # added to every Web API request
    latency_jitter_ms: float = 0.0  # plus a uniform random 0..jitter
    storm_seconds: float = 0.0  # a 429 storm: every request is throttled for this long from start
    storm_retry_after: int = 2

    def __post_init__(self) -> None:
        for name in ("error_500_rate", "error_503_rate", "throttle_rate", "drop_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        for name in ("latency_ms", "latency_jitter_ms", "storm_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.storm_retry_after < 1:
            raise ValueError("storm_retry_after must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def updated(self, changes: dict[str, Any]) -> FaultSettings:
        """A copy with ``changes`` applied; unknown names or bad values raise ``ValueError``."""
        known = {f.name: f.type for f in fields(self)}
        clean: dict[str, Any] = {}
        for name, value in changes.items():
            if name not in known:
                raise ValueError(f"unknown fault setting {name!r}")
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number")
            clean[name] = int(value) if name in ("seed", "storm_retry_after") else float(value)
        return replace(self, **clean)


@dataclass(frozen=True, slots=True)
class FederatedCredential:
    """A federated identity credential on an app (workload identity federation): a token from
    ``issuer`` about ``subject`` for ``audience`` stands in for the app's secret. Entra fetches
    the issuer's signing keys from its OpenID configuration; the emulator, offline, is given
    them: ``issuer_key_pem`` is the issuer's RSA public key or certificate (PEM)."""

    client_id: str
    issuer: str
    subject: str
    issuer_key_pem: str = field(repr=False)
    audience: str = "api://AzureADTokenExchange"  # Entra's recommended audience


@dataclass(frozen=True, slots=True)
class EmulatorConfig:
    """Everything the emulator needs; ``create_app(config)`` serves it."""

    tenant_id: str = DEFAULT_TENANT_ID
    client_id: str = DEFAULT_CLIENT_ID
    client_secret: str = field(default=DEFAULT_CLIENT_SECRET, repr=False)
    # More app registrations: client id -> secret.
    extra_clients: dict[str, str] = field(default_factory=dict, repr=False)
    # App certificates: client id -> PEM certificates. Client assertions signed by their keys
    # stand in for the secret (emulator/assertions.py).
    client_certificates: dict[str, tuple[str, ...]] = field(default_factory=dict, repr=False)
    federated_credentials: tuple[FederatedCredential, ...] = ()
    # Client ids added as application users; None means every registered client.
    application_users: frozenset[str] | None = None
    token_lifetime_seconds: int = 3599
    key_activation_delay_seconds: float = 2.0
    limits: ServiceLimits = field(default_factory=ServiceLimits)
    faults: FaultSettings = field(default_factory=FaultSettings)
    # Modeled server time of each request (CostModel.free(): the emulator's own time only).
    costs: CostModel = field(default_factory=CostModel)
    db_path: Path | None = None  # SQLite file; None keeps everything in memory
    max_aggregate_records: int = 50_000
    max_page_size: int = 5000
    # Solutions to seed besides Default: (unique name, publisher customization prefix).
    solutions: tuple[tuple[str, str], ...] = ()
    org_auditing: bool = True  # the organization's isauditenabled

    def __post_init__(self) -> None:
        if self.token_lifetime_seconds < 1:
            raise ValueError("token_lifetime_seconds must be >= 1")
        if self.key_activation_delay_seconds < 0:
            raise ValueError("key_activation_delay_seconds must be >= 0")

    def secrets(self) -> dict[str, str]:
        """Every registered client id with its secret."""
        return {**self.extra_clients, self.client_id: self.client_secret}

    def registered_clients(self) -> set[str]:
        """Every client id with a secret, a certificate or a federated credential."""
        federated = {f.client_id for f in self.federated_credentials}
        return set(self.secrets()) | set(self.client_certificates) | federated

    def is_application_user(self, client_id: str) -> bool:
        if self.application_users is None:
            return client_id in self.registered_clients()
        return client_id in self.application_users
