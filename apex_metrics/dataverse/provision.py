"""Create or check the Dataverse table of the data contract (``apex-metrics dataverse provision``).

The contract (design.md, :mod:`apex_metrics.metric`): table ``apex_CampaignMetrics`` with the
primary name column ``apex_name``, the 13 columns with their exact types, lengths, precision
and ranges, the alternate key ``apex_RunIdKey`` on ``apex_runid`` (Active before upserts use it),
change tracking, auditing and duplicate detection.

Idempotent: what exists and matches is left alone, what is missing is created, and what exists
but differs (drift) is reported column by column with the fix; Dataverse cannot change a
column's type in place, so drift is never "repaired" by deleting data. A name carrying the
publisher prefix twice (``apex_apex_…``, the maker portal adding ``apex_`` to a name typed with
it) is recognised and explained. ``dry_run`` reads only and returns the plan.

With a solution (``APEX_DATAVERSE_SOLUTION``), everything is created in it, after checking that
it exists and that its publisher's prefix is the contract's (:mod:`.solution`); what changed is
published; organization auditing being off is a warning.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from apex_metrics import metric
from apex_metrics.dataverse.client import DataverseClient
from apex_metrics.dataverse.contract import (
    DOUBLE,
    LN,
    PREFIX,
    PRIMARY_NAME,
    TABLE_PATH,
    ColumnSpec,
    Problem,
    attribute_body,
    compare_column,
    contract_columns,
    double_prefix_problem,
    flag,
    key_body,
    managed,
    table_body,
)
from apex_metrics.dataverse.errors import DataverseError
from apex_metrics.dataverse.solution import (
    SolutionInfo,
    auditing_warnings,
    find_solution,
    headers_for,
    in_solution,
    not_in_solution_warning,
    publish_xml,
)

__all__ = [  # the contract helpers are re-exported for callers of this module
    "TABLE_PATH",
    "ColumnSpec",
    "ContractDrift",
    "Problem",
    "ProvisionReport",
    "SolutionInfo",
    "Step",
    "attribute_body",
    "compare_column",
    "contract_columns",
    "double_prefix_problem",
    "provision",
    "table_body",
]


@dataclass(slots=True)
class Step:
    """One change: planned (dry run) or done."""

    action: str
    target: str
    detail: str
    done: bool = False


class ContractDrift(DataverseError):
    """The Dataverse table differs from the contract in ways provisioning must not repair."""

    hint = "fix each problem listed above as it says, then run `apex-metrics dataverse provision`"
    exit_code = 3  # cli.EXIT_DIFFERENCES: differences found, told apart from errors


# ------------------------------------------------------------------------------------------------
# The report


@dataclass(slots=True)
class ProvisionReport:
    environment_url: str
    dry_run: bool
    table: str = LN
    entity_set: str = metric.ENTITY_SET
    steps: list[Step] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    key_status: str | None = None
    solution: SolutionInfo | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return any(step.done for step in self.steps)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["changed"] = self.changed
        data["ok"] = self.ok
        return data

    def lines(self) -> list[str]:
        """Human-readable summary."""
        out = []
        verb = "would apply" if self.dry_run else "applied"
        for step in self.steps:
            mark = "planned" if self.dry_run else ("done" if step.done else "pending")
            out.append(f"[{mark}] {step.action} {step.target}: {step.detail}")
        for problem in self.problems:
            out.append(f"[problem] {problem}")
        if not self.steps and not self.problems:
            out.append(
                f"nothing to change: table {self.table} ({self.entity_set}) matches the contract "
                f"(13 columns, key {metric.ALTERNATE_KEY_SCHEMA_NAME} {self.key_status}, change "
                "tracking, auditing, duplicate detection)"
            )
        elif not self.problems:
            out.append(f"{len(self.steps)} change(s) {verb}; no drift")
        else:
            out.append(f"{len(self.problems)} problem(s) need a manual fix")
        if self.solution is not None:
            out.append(f"[check] {self.solution.line()}")
        out.extend(f"[warning] {warning}" for warning in self.warnings)
        return out


Progress = Callable[[str], None]


# ------------------------------------------------------------------------------------------------
# Reading and changing the environment


async def _find_table(client: DataverseClient, logical: str) -> dict[str, Any] | None:
    data = await client.get_json(
        "EntityDefinitions",
        {
            "$select": "LogicalName,SchemaName,EntitySetName,MetadataId",
            "$filter": f"LogicalName eq '{logical}'",
        },
    )
    rows = data.get("value", [])
    return dict(rows[0]) if rows else None


async def _attributes(client: DataverseClient) -> dict[str, dict[str, Any]]:
    data = await client.get_json(f"{TABLE_PATH}/Attributes")
    return {str(a.get("LogicalName")): dict(a) for a in data.get("value", [])}


async def _keys(client: DataverseClient) -> list[dict[str, Any]]:
    data = await client.get_json(f"{TABLE_PATH}/Keys")
    return [dict(k) for k in data.get("value", [])]


def _our_key(keys: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    for key in keys:
        attrs = [str(a).lower() for a in key.get("KeyAttributes") or []]
        if attrs == [metric.ALTERNATE_KEY_COLUMN]:
            return key
    return None


def _missing_flags(definition: dict[str, Any]) -> list[str]:
    missing = []
    if not flag(definition.get("ChangeTrackingEnabled")):
        missing.append("change tracking")
    if not flag(definition.get("IsAuditEnabled")):
        missing.append("auditing")
    if not flag(definition.get("IsDuplicateDetectionEnabled")):
        missing.append("duplicate detection")
    return missing


async def provision(
    client: DataverseClient,
    *,
    dry_run: bool = False,
    progress: Progress | None = None,
    key_timeout: float = 600.0,
    poll_interval: float = 2.0,
    solution: str | None = None,
) -> ProvisionReport:
    """Create what is missing, report what differs; with ``dry_run`` only plan.

    With ``solution``, check it first (unknown, managed or of a publisher with another prefix:
    raise before anything is created), then create every table, column and key in it."""
    say = progress or (lambda _msg: None)
    report = ProvisionReport(client.environment_url, dry_run)
    if solution:
        report.solution = await find_solution(client, solution)
    report.warnings.extend(await auditing_warnings(client))
    headers = headers_for(report.solution.unique_name if report.solution else None)

    async def step(action: str, target: str, detail: str, run: Any = None) -> None:
        item = Step(action, target, detail)
        report.steps.append(item)
        if not dry_run and run is not None:
            say(f"{action} {target}: {detail}")
            await run
            item.done = True
        elif run is not None:
            run.close()  # never awaited in a dry run

    if await _table_and_columns(client, report, step, headers):
        await _flags(client, step, headers)
        key = await _key(client, report, step, headers)
    else:  # a dry run without the table: everything after it is planned blind
        key = None
    await _publish(client, report, step)
    if key is None and dry_run:
        await step("wait for key", metric.ALTERNATE_KEY_SCHEMA_NAME, "until Active")
        return report
    status = str((key or {}).get("EntityKeyIndexStatus") or "Unknown")
    if status != "Active" and not dry_run:
        status = await _wait_key_active(client, say, key_timeout, poll_interval)
        report.steps.append(Step("wait for key", metric.ALTERNATE_KEY_SCHEMA_NAME, status, True))
    elif status != "Active":
        report.steps.append(Step("wait for key", metric.ALTERNATE_KEY_SCHEMA_NAME, f"now {status}"))
    report.key_status = status
    if status == "Failed":
        report.problems.append(
            Problem(
                metric.ALTERNATE_KEY_SCHEMA_NAME,
                "key index failed",
                "Active",
                "Failed",
                "remove duplicate apex_runid values, then reactivate the key (ReactivateEntityKey "
                "or the maker portal: Keys > Reactivate)",
            )
        )
    return report


StepRunner = Callable[..., Any]


async def _table_and_columns(
    client: DataverseClient, report: ProvisionReport, step: StepRunner, headers: dict[str, str]
) -> bool:
    """Create the table or check it, then its columns. False: a dry run found no table (the
    columns and the key are then planned without reading)."""
    stray = await _find_table(client, PREFIX + LN)
    if stray is not None:
        report.problems.append(double_prefix_problem(PREFIX + LN, "table"))
    table = await _find_table(client, LN)
    specs = (PRIMARY_NAME, *contract_columns())
    if table is None:
        await step(
            "create table",
            metric.TABLE_SCHEMA_NAME,
            f"entity set {metric.ENTITY_SET}, primary name {metric.PRIMARY_NAME}",
            client.request("POST", "EntityDefinitions", json_body=table_body(), headers=headers),
        )
        if report.dry_run:
            for spec in specs[1:]:
                await step("create column", spec.logical, spec.describe())
            await step("create key", metric.ALTERNATE_KEY_SCHEMA_NAME, "on apex_runid")
            return False
    else:
        entity_set = table.get("EntitySetName")
        if entity_set and entity_set != metric.ENTITY_SET:
            report.problems.append(
                Problem(
                    LN,
                    "wrong entity set",
                    metric.ENTITY_SET,
                    str(entity_set),
                    "the table was created with another schema name; delete it and provision",
                )
            )
        solution = report.solution
        if solution is not None and table.get("MetadataId"):
            if not await in_solution(client, solution, str(table["MetadataId"])):
                report.warnings.append(not_in_solution_warning(solution))

    attributes = await _attributes(client)
    primary = attributes.get(metric.PRIMARY_NAME)
    for spec in specs[1:]:
        actual = attributes.get(spec.logical)
        if actual is None:
            await step(
                "create column",
                spec.logical,
                spec.describe(),
                client.request(
                    "POST",
                    f"{TABLE_PATH}/Attributes",
                    json_body=attribute_body(spec),
                    headers=headers,
                ),
            )
        else:
            report.problems.extend(compare_column(spec, actual))
        doubled = DOUBLE + spec.logical[len(PREFIX) :]
        if doubled in attributes:
            report.problems.append(double_prefix_problem(doubled, "column"))
    if primary is None:
        report.problems.append(
            Problem(
                metric.PRIMARY_NAME,
                "missing primary name column",
                "apex_name (String) as primary name",
                "absent",
                "the table was created with another primary name column; recreate the table",
            )
        )
    return True


async def _flags(client: DataverseClient, step: StepRunner, headers: dict[str, str]) -> None:
    definition = await client.get_json(TABLE_PATH)
    missing_flags = _missing_flags(definition)
    if missing_flags:
        await step("enable", LN, ", ".join(missing_flags), _put_flags(client, definition, headers))


async def _key(
    client: DataverseClient, report: ProvisionReport, step: StepRunner, headers: dict[str, str]
) -> dict[str, Any] | None:
    """The contract's key, created when missing (None: a dry run that would create it)."""
    key = _our_key(await _keys(client))
    if key is None:
        await step(
            "create key",
            metric.ALTERNATE_KEY_SCHEMA_NAME,
            "on apex_runid",
            client.request("POST", f"{TABLE_PATH}/Keys", json_body=key_body(), headers=headers),
        )
        if report.dry_run:
            return None
        key = _our_key(await _keys(client))
    return key


_PUBLISHED_BY = ("create table", "create column", "create key", "enable")


async def _publish(client: DataverseClient, report: ProvisionReport, step: StepRunner) -> None:
    """Publish the table when this run changed (or, dry, would change) its definition."""
    changes = [s for s in report.steps if s.action in _PUBLISHED_BY]
    if report.dry_run and changes:
        await step("publish", LN, "PublishXml")
    elif any(s.done for s in changes):
        await step(
            "publish",
            LN,
            "PublishXml",
            client.request("POST", "PublishXml", json_body=publish_xml(LN)),
        )


async def _put_flags(
    client: DataverseClient, definition: dict[str, Any], headers: dict[str, str]
) -> None:
    body = {k: v for k, v in definition.items() if not k.startswith("@odata.context")}
    body["ChangeTrackingEnabled"] = True
    body["IsAuditEnabled"] = managed(True, "canmodifyauditsettings")
    body["IsDuplicateDetectionEnabled"] = managed(True, "canmodifyduplicatedetectionsettings")
    target = (
        f"EntityDefinitions({definition['MetadataId']})"
        if definition.get("MetadataId")
        else TABLE_PATH
    )
    await client.request(
        "PUT", target, json_body=body, headers={"MSCRM.MergeLabels": "true", **headers}
    )


async def _wait_key_active(
    client: DataverseClient, say: Progress, timeout: float, interval: float
) -> str:
    started = time.monotonic()
    last = ""
    while True:
        key = _our_key(await _keys(client))
        status = str((key or {}).get("EntityKeyIndexStatus") or "Unknown")
        elapsed = time.monotonic() - started
        if status != last:
            say(f"key {metric.ALTERNATE_KEY_SCHEMA_NAME}: {status} after {elapsed:.0f} s")
            last = status
        if status in ("Active", "Failed"):
            return status
        if elapsed >= timeout:
            raise DataverseError(
                f"key {metric.ALTERNATE_KEY_SCHEMA_NAME} still {status} after {timeout:.0f} s",
                hint="the index job is slow on large tables; run provision again later to keep "
                "waiting",
            )
        await asyncio.sleep(interval)
