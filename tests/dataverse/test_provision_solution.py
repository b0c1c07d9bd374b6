"""Solution-aware provisioning against the emulator over real HTTP: the solution check, the
components it creates, publishing, and the organization auditing warning."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from apex_metrics import metric
from apex_metrics.dataverse.client import DataverseClient
from apex_metrics.dataverse.connect import open_dataverse
from apex_metrics.dataverse.provision import provision
from apex_metrics.dataverse.solution import UnknownSolution, WrongPublisherPrefix
from apex_metrics.emulator import CostModel, EmulatorConfig
from apex_metrics.testing import RunningEmulator, running_emulator

from .conftest import fast_flow, local_settings
from .test_emulator_http import cli

SOLUTIONS = (("apexmetrics", "apex"), ("contosocrm", "cont"))
TABLE = metric.TABLE_LOGICAL_NAME


@pytest.fixture
def emulator() -> Iterator[RunningEmulator]:
    config = EmulatorConfig(
        costs=CostModel.free(), key_activation_delay_seconds=0.2, solutions=SOLUTIONS
    )
    with running_emulator(config) as server:
        yield server


@pytest.fixture
def quiet_org() -> Iterator[RunningEmulator]:
    """An environment whose organization auditing is off."""
    config = EmulatorConfig(
        costs=CostModel.free(), key_activation_delay_seconds=0.2, org_auditing=False
    )
    with running_emulator(config) as server:
        yield server


def stats(server: RunningEmulator) -> dict[str, Any]:
    data: dict[str, Any] = httpx.get(f"{server.url}/_emulator/stats", timeout=10).json()
    return data


async def components(client: DataverseClient, unique_name: str) -> list[dict[str, Any]]:
    found = await client.get_json(
        "solutions", {"$filter": f"uniquename eq '{unique_name}'", "$select": "solutionid"}
    )
    solution_id = found["value"][0]["solutionid"]
    data = await client.get_json(
        "solutioncomponents",
        {
            "$filter": f"_solutionid_value eq {solution_id}",
            "$select": "objectid,componenttype,_solutionid_value",
        },
    )
    return list(data["value"])


async def tables(client: DataverseClient) -> list[str]:
    data = await client.get_json("EntityDefinitions", {"$select": "LogicalName"})
    return [t["LogicalName"] for t in data["value"]]


async def test_provision_into_a_solution_then_again_changes_and_publishes_nothing(
    emulator: RunningEmulator,
) -> None:
    async with open_dataverse(local_settings(emulator.url), flow=fast_flow()) as client:
        first = await provision(client, solution="apexmetrics", poll_interval=0.05)
        assert first.ok and first.key_status == "Active", first.lines()
        assert first.solution is not None and first.solution.prefix == "apex"
        assert first.warnings == []
        actions = [s.action for s in first.steps]
        assert actions.index("publish") > actions.index("create key")
        assert actions[-1] == "wait for key"
        assert stats(emulator)["publishes"] == [{"action": "PublishXml", "entities": [TABLE]}]

        made = await components(client, "apexmetrics")
        by_type: dict[int, list[str]] = {}
        for item in made:
            by_type.setdefault(item["componenttype"], []).append(item["objectid"])
        definition = await client.get_json(
            f"EntityDefinitions(LogicalName='{TABLE}')", {"$select": "MetadataId"}
        )
        assert by_type[1] == [definition["MetadataId"]], "the table, by its MetadataId"
        attributes = await client.get_json(
            f"EntityDefinitions(LogicalName='{TABLE}')/Attributes",
            {"$select": "LogicalName,MetadataId"},
        )
        ids = {a["LogicalName"]: a["MetadataId"] for a in attributes["value"]}
        columns = [c.dataverse for c in metric.COLUMNS]
        assert sorted(by_type[2]) == sorted(ids[c] for c in columns), "13 columns"
        keys = await client.get_json(f"EntityDefinitions(LogicalName='{TABLE}')/Keys")
        assert by_type[14] == [keys["value"][0]["MetadataId"]], "the alternate key"
        assert await components(client, "contosocrm") == []

        second = await provision(client, solution="apexmetrics", poll_interval=0.05)
        assert second.steps == [] and not second.changed and second.ok
        assert second.lines()[0].startswith("nothing to change")
        assert second.lines()[1].startswith("[check] solution apexmetrics")
        assert len(stats(emulator)["publishes"]) == 1, "nothing published the second time"
        assert len(await components(client, "apexmetrics")) == len(made)


async def test_a_solution_of_another_publisher_prefix_is_refused_before_anything(
    emulator: RunningEmulator,
) -> None:
    async with open_dataverse(local_settings(emulator.url), flow=fast_flow()) as client:
        for dry_run in (True, False):
            with pytest.raises(WrongPublisherPrefix) as caught:
                await provision(client, solution="contosocrm", dry_run=dry_run)
            assert "'cont'" in caught.value.message
            assert "contpublisher" in caught.value.message
            assert caught.value.hint and "APEX_DATAVERSE_SOLUTION" in caught.value.hint
        assert await tables(client) == []
        assert await components(client, "contosocrm") == []
    assert stats(emulator)["publishes"] == []


async def test_an_unknown_solution_is_a_clear_error_before_anything(
    emulator: RunningEmulator,
) -> None:
    async with open_dataverse(local_settings(emulator.url), flow=fast_flow()) as client:
        with pytest.raises(UnknownSolution) as caught:
            await provision(client, solution="nosuchsolution")
        assert "solution nosuchsolution does not exist" in caught.value.message
        assert caught.value.hint and "New solution" in caught.value.hint
        with pytest.raises(UnknownSolution, match="not a solution unique name"):
            await provision(client, solution="Apex Metrics")
        assert await tables(client) == []
    assert stats(emulator)["publishes"] == []


async def test_dry_run_shows_solution_check_publish_and_changes_nothing(
    emulator: RunningEmulator,
) -> None:
    async with open_dataverse(local_settings(emulator.url), flow=fast_flow()) as client:
        plan = await provision(client, solution="apexmetrics", dry_run=True)
        lines = plan.lines()
        assert "[planned] publish apex_campaignmetrics: PublishXml" in lines
        assert lines[-1].startswith("[check] solution apexmetrics")
        assert not plan.changed and await tables(client) == []
        await provision(client, poll_interval=0.05)  # the table exists, outside the solution
        replan = await provision(client, solution="apexmetrics", dry_run=True)
        assert replan.steps == []
        assert any("not in solution apexmetrics" in w for w in replan.warnings)
    assert len(stats(emulator)["publishes"]) == 1, "only the real run published"


async def test_organization_auditing_off_is_warned_with_the_setting(
    quiet_org: RunningEmulator,
) -> None:
    async with open_dataverse(local_settings(quiet_org.url), flow=fast_flow()) as client:
        for dry_run in (True, False):
            report = await provision(client, dry_run=dry_run, poll_interval=0.05)
            assert len(report.warnings) == 1
            warning = report.warnings[0]
            assert warning.startswith("organization auditing is off")
            assert "Power Platform admin center" in warning and "isauditenabled" in warning
            assert f"[warning] {warning}" in report.lines()


def test_cli_solution_flag_and_setting(emulator: RunningEmulator) -> None:
    env = {"APEX_DATAVERSE_URL": emulator.url}
    wrong = cli("dataverse", "provision", "--solution", "contosocrm", env=env)
    assert wrong.returncode == 1
    lines = wrong.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: solution contosocrm belongs to")
    assert "'cont'" in lines[0] and "Traceback" not in wrong.stderr
    plan = cli(
        "dataverse", "provision", "--dry-run", "--json",
        env={**env, "APEX_DATAVERSE_SOLUTION": "apexmetrics"},
    )  # fmt: skip
    assert plan.returncode == 0, plan.stderr
    data = json.loads(plan.stdout)
    assert data["solution"]["unique_name"] == "apexmetrics" and data["changed"] is False
    assert "publish" in [s["action"] for s in data["steps"]]
