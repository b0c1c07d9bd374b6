"""The cost model: what each kind of request is counted as (``Usage``), the arithmetic of its
modeled time, and, over real HTTP, that a request takes its modeled time by waiting for it and
is charged it as execution time.

Counting does not depend on the profile, so most tests here run on the shared ``free``
emulator and read each request's ``usage`` from ``/_emulator/stats`` (``recent``)."""

from __future__ import annotations

import json
import math
import time
from typing import Any

import httpx
import pytest

from apex_metrics.dataverse.multipart_encode import encode_batch_request
from apex_metrics.dataverse.multipart_parts import BatchPart, ChangeSet
from apex_metrics.emulator import CostModel, EmulatorConfig, ServiceLimits, Usage, batch_upserts
from apex_metrics.testing import RunningEmulator, running_emulator
from tests.emulator.conftest import SET, TABLE, api_client, create_metrics_table, emulator_stats

PUBLISH = {"ParameterXml": "<importexportxml/>"}  # PublishXml's required parameter

REPRESENTATION = {"Prefer": "return=representation"}


def usage(**counts: int) -> dict[str, int]:
    return {"writes": 0, "multiple_rows": 0, "retrieves": 0, **counts}


def last_usage(emu: RunningEmulator) -> dict[str, int]:
    entry = emulator_stats(emu)["recent"][-1]
    counts: dict[str, int] = entry["usage"]
    return counts


def upsert_part(key: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> BatchPart:
    url = f"/api/data/v9.2/{SET}(apex_runid='{key}')"
    part_headers = {"Content-Type": "application/json", **(headers or {})}
    return BatchPart("PATCH", url, part_headers, json.dumps(body).encode())


def post_part(key: str, content_id: str | None = None, **extra: Any) -> BatchPart:
    body = json.dumps({"apex_runid": key, **extra}).encode()
    headers = {"Content-Type": "application/json"}
    return BatchPart("POST", f"/api/data/v9.2/{SET}", headers, body, content_id)


def get_part(url: str) -> BatchPart:
    return BatchPart("GET", f"/api/data/v9.2/{url}", {"Accept": "application/json"})


def post_batch(
    client: httpx.Client, items: list[BatchPart | ChangeSet], prefer: str | None = None
) -> httpx.Response:
    body, content_type = encode_batch_request(items)
    headers = {"Content-Type": content_type, **({"Prefer": prefer} if prefer else {})}
    return client.post("$batch", content=body, headers=headers)


TOO_LONG = {"apex_phase": "x" * 17}  # MaxLength 16: 400 0x80044331


# --- the arithmetic --------------------------------------------------------------------------


@pytest.mark.unit
def test_cost_model_defaults_validation_and_dict() -> None:
    model = CostModel()
    assert model.to_dict() == {
        "profile": "dataverse",
        "request_ms": 30.0,
        "write_ms": 40.0,
        "multiple_row_ms": 8.0,
        "retrieve_ms": 10.0,
    }
    assert CostModel.free().to_dict() == {**model.to_dict(), "profile": "free"}
    assert EmulatorConfig().costs == model  # Dataverse's costs unless told otherwise
    for bad in ({"request_ms": -1.0}, {"write_ms": math.nan}, {"retrieve_ms": math.inf}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            CostModel(**bad)
    with pytest.raises(ValueError, match="profile"):
        CostModel(profile="cheap")  # type: ignore[arg-type]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("counts", "ms"),
    [
        (Usage(), 30),  # a GET on its own: the request overhead only
        (Usage(writes=1), 30 + 40),  # one write
        (Usage(writes=1, retrieves=1), 30 + 40 + 10),  # with return=representation
        (Usage(writes=3, retrieves=2), 30 + 3 * 40 + 2 * 10),  # a $batch: 3 writes, 2 GETs
        (Usage(multiple_rows=1000), 30 + 1000 * 8),  # UpsertMultiple of 1,000 rows
    ],
)
def test_modeled_seconds_of_a_usage(counts: Usage, ms: float) -> None:
    assert CostModel().seconds(counts) == pytest.approx(ms / 1000)
    assert CostModel.free().seconds(counts) == 0.0
    custom = CostModel(request_ms=1, write_ms=10, multiple_row_ms=100, retrieve_ms=1000)
    expected = 1 + counts.writes * 10 + counts.multiple_rows * 100 + counts.retrieves * 1000
    assert custom.seconds(counts) == pytest.approx(expected / 1000)


@pytest.mark.unit
def test_usage_of_requests_and_parts() -> None:
    alone = Usage()
    alone.request("GET", 200, False)
    assert alone == Usage()
    alone.request("PATCH", 200, True)
    alone.request("POST", 400, True)  # failed: nothing was read back
    alone.request("DELETE", 204, False)
    assert alone == Usage(writes=3, retrieves=1)
    parts = Usage()
    parts.part("GET", 404, False)  # a GET part is a retrieve, found or not
    parts.part("PATCH", 201, True)
    parts.part("PATCH", 204, False)
    assert parts == Usage(writes=2, retrieves=2)


@pytest.mark.unit
def test_dop_hint_formula_and_limit_validation() -> None:
    assert ServiceLimits().dop_hint == 8  # 2 servers x 1,200 s / 300 s
    assert ServiceLimits(web_servers=1).dop_hint == 4
    assert (
        ServiceLimits(web_servers=3, execution_seconds_per_window=20, window_seconds=6).dop_hint
        == 10
    )
    assert ServiceLimits(execution_seconds_per_window=1).dop_hint == 1  # at least one
    assert ServiceLimits().to_dict()["dop_hint"] == 8
    assert ServiceLimits().to_dict()["web_servers"] == 2
    with pytest.raises(ValueError, match="web_servers"):
        ServiceLimits(web_servers=0)
    with pytest.raises(ValueError, match="window_seconds"):
        ServiceLimits(window_seconds=0)


# --- what each request is counted as, over HTTP ---------------------------------------------


def test_single_requests(emulator: RunningEmulator, client: httpx.Client, table: str) -> None:
    row = f"{SET}(apex_runid='a')"
    cases: list[tuple[str, Any, int, dict[str, int]]] = [
        ("upsert", lambda: client.patch(row, json={"apex_tokensin": 1}), 204, usage(writes=1)),
        (
            "upsert with return=representation",
            lambda: client.patch(row, json={"apex_tokensin": 2}, headers=REPRESENTATION),
            200,
            usage(writes=1, retrieves=1),
        ),
        (
            "failed upsert with return=representation",
            lambda: client.patch(row, json=TOO_LONG, headers=REPRESENTATION),
            400,
            usage(writes=1),
        ),
        ("create", lambda: client.post(SET, json={"apex_runid": "b"}), 204, usage(writes=1)),
        ("retrieve", lambda: client.get(row), 200, usage()),
        ("query with $count", lambda: client.get(SET, params={"$count": "true"}), 200, usage()),
        ("WhoAmI", lambda: client.get("WhoAmI"), 200, usage()),
        ("delete", lambda: client.delete(f"{SET}(apex_runid='b')"), 204, usage(writes=1)),
        ("PublishXml", lambda: client.post("PublishXml", json=PUBLISH), 204, usage(writes=1)),
        (
            "metadata write",
            lambda: client.put(f"EntityDefinitions(LogicalName='{TABLE}')", json={}),
            204,
            usage(writes=1),
        ),
    ]
    for name, send, status, expected in cases:
        assert send().status_code == status, name
        assert last_usage(emulator) == expected, name


@pytest.mark.parametrize("fast", [True, False])
def test_batch_parts_each_count_as_a_request(
    emulator: RunningEmulator,
    client: httpx.Client,
    table: str,
    fast: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Parts answered by the upsert shortcut count like the others (with it and without)."""
    monkeypatch.setattr(batch_upserts, "FAST_PATH", fast)
    items: list[BatchPart | ChangeSet] = [
        *(upsert_part(f"r{n}", {"apex_tokensin": n}, REPRESENTATION) for n in range(3)),
        get_part(f"{SET}(apex_runid='r0')"),
        get_part(f"{SET}(apex_runid='missing')"),  # 404: still a retrieve
        post_part("p"),
        upsert_part("bad", TOO_LONG, REPRESENTATION),  # 400: a write, nothing read back
    ]
    response = post_batch(client, items, "odata.continue-on-error")
    assert response.status_code == 200
    counted = last_usage(emulator)
    assert counted == usage(writes=5, retrieves=3 + 2)
    ms = CostModel().seconds(Usage(**counted)) * 1000
    assert ms == pytest.approx(30 + 5 * 40 + 5 * 10)  # the request overhead once


def test_a_stopped_batch_counts_only_the_parts_that_ran(
    emulator: RunningEmulator, client: httpx.Client, table: str
) -> None:
    items: list[BatchPart | ChangeSet] = [
        upsert_part("first", {}, REPRESENTATION),
        upsert_part("bad", TOO_LONG, REPRESENTATION),  # stops the batch here
        *(upsert_part(f"never{n}", {}, REPRESENTATION) for n in range(3)),
    ]
    assert post_batch(client, items).status_code == 400
    assert last_usage(emulator) == usage(writes=2, retrieves=1)


def test_change_set_parts_count_until_the_failure(
    emulator: RunningEmulator, client: httpx.Client, table: str
) -> None:
    good = ChangeSet([post_part(f"ok{n}", str(n)) for n in range(3)])
    failing = ChangeSet(
        [
            post_part("cs-a", "1"),
            post_part("cs-b", "2", apex_phase="x" * 17),  # fails: the rest does not run
            post_part("cs-c", "3"),
            post_part("cs-d", "4"),
        ]
    )
    read = get_part(SET)
    response = post_batch(client, [good, failing, read], "odata.continue-on-error")
    assert response.status_code == 200
    assert last_usage(emulator) == usage(writes=3 + 2, retrieves=1)
    runs = sorted(r["apex_runid"] for r in client.get(SET).json()["value"])
    assert runs == ["ok0", "ok1", "ok2"]  # the failed change set rolled back


def test_bulk_messages_count_their_targets(
    emulator: RunningEmulator, client: httpx.Client, table: str
) -> None:
    action = f"{SET}/Microsoft.Dynamics.CRM.UpsertMultiple"
    targets = [
        {"@odata.type": f"Microsoft.Dynamics.CRM.{TABLE}", "@odata.id": f"{SET}(apex_runid='u{n}')"}
        for n in range(7)
    ]
    assert client.post(action, json={"Targets": targets}).status_code == 204
    assert last_usage(emulator) == usage(multiple_rows=7)
    failing = [*targets[:1], {**targets[1], **TOO_LONG}, *targets[2:5]]
    assert client.post(action, json={"Targets": failing}).status_code == 400
    assert last_usage(emulator) == usage(multiple_rows=5)  # every target sent is charged
    create = BatchPart(
        "POST",
        f"/api/data/v9.2/{SET}/Microsoft.Dynamics.CRM.CreateMultiple",
        {"Content-Type": "application/json"},
        json.dumps({"Targets": [{"apex_runid": f"c{n}"} for n in range(3)]}).encode(),
    )
    assert post_batch(client, [create, upsert_part("x", {})]).status_code == 200
    assert last_usage(emulator) == usage(writes=1, multiple_rows=3)  # not a write as well


# --- waiting out the modeled time ------------------------------------------------------------


def execution_total(emu: RunningEmulator) -> float:
    return sum(s["execution_seconds_total"] for s in emulator_stats(emu)["web_servers"])


def test_a_request_takes_its_modeled_time_waiting() -> None:
    """A write modeled at 1.5 s answers after at least 1.5 s, is charged 1.5 s (not 1.5 s plus
    the emulator's own work), and the process (server thread included) stays idle meanwhile."""
    costs = CostModel(request_ms=100, write_ms=1400, multiple_row_ms=0, retrieve_ms=0)
    with running_emulator(EmulatorConfig(costs=costs)) as emu, api_client(emu) as client:
        started = time.perf_counter()
        assert client.get("WhoAmI").status_code == 200
        assert time.perf_counter() - started >= 0.1
        before = execution_total(emu)
        assert before == pytest.approx(0.1, abs=0.005)
        cpu = time.process_time()
        started = time.perf_counter()
        assert client.post("PublishXml", json=PUBLISH).status_code == 204
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu
        assert wall >= 1.5
        assert cpu < 0.5, f"the emulator computed for {cpu:.2f} s instead of waiting"
        assert execution_total(emu) - before == pytest.approx(1.5, abs=0.005)
        last = emulator_stats(emu)["recent"][-1]
        assert last["modeled_ms"] == 1500.0
        assert last["ms"] >= 1500.0


def test_work_longer_than_the_model_is_charged_as_work() -> None:
    """The emulator's own time counts when it exceeds the modeled time: max(work, modeled)."""
    costs = CostModel(request_ms=1, write_ms=0, multiple_row_ms=0, retrieve_ms=0)
    config = EmulatorConfig(key_activation_delay_seconds=0, costs=costs)
    with running_emulator(config) as emu, api_client(emu) as client:
        create_metrics_table(client)
        before = execution_total(emu)
        items: list[BatchPart | ChangeSet] = [
            upsert_part(f"w{n}", {"apex_tokensin": n, "apex_name": f"n{n}"}) for n in range(500)
        ]
        assert post_batch(client, items).status_code == 200
        charged = execution_total(emu) - before
        last = emulator_stats(emu)["recent"][-1]
        assert last["modeled_ms"] == 1.0
        assert 0.005 < charged <= last["ms"] / 1000  # far above the 1 ms modeled
