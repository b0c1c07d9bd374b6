"""The ``$batch`` shortcut for plain upserts (``batch_upserts``) answers exactly as the usual way.

Each scenario runs twice on a fresh store, with the shortcut and without it, over real HTTP;
the answers, the rows, the audit records and the change-tracking view must be the same (ids
and clock times aside), and a few answers are checked outright as well.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from apex_metrics.dataverse.multipart_decode import decode_batch_response
from apex_metrics.dataverse.multipart_encode import encode_batch_request
from apex_metrics.dataverse.multipart_parts import (
    BatchPart,
    BatchResponseItem,
    ChangeSet,
    ChangeSetResponse,
    flatten_responses,
)
from apex_metrics.emulator import batch_upserts
from apex_metrics.testing import RunningEmulator
from tests.emulator.conftest import SET, TABLE, create_metrics_table

ENGINE = {"Content-Type": "application/json; type=entry", "Prefer": "return=representation"}
SELECT = "?$select=apex_runid"
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# Clock times, and the one in a delta link's token (test data stays before 2020).
_NOW = re.compile(r"20[2-9]\d-\d\d-\d\dT\d\d:\d\d:\d\dZ|\d\d%2F\d\d%2F20[2-9]\d[^&]*")
_VOLATILE = {"date", "server", "x-ms-ratelimit-time-remaining-xrm-requests"}

Part = BatchPart | ChangeSet


def upsert(
    key: str, body: dict[str, Any] | bytes, query: str = SELECT, **headers: str
) -> BatchPart:
    """A part as the sync engine sends it (extra headers: ``If_Match="*"`` -> If-Match)."""
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    extra = {name.replace("_", "-"): value for name, value in headers.items()}
    return BatchPart(
        "PATCH", f"/api/data/v9.2/{SET}(apex_runid='{key}'){query}", ENGINE | extra, payload
    )


def row(n: int, **extra: Any) -> dict[str, Any]:
    return {
        "apex_name": f"name {n}",
        "apex_campaignid": f"c-{n % 3}",
        "apex_tokensin": 100 + n,
        "apex_costusd": round(0.01 * n, 5),
        "apex_successrate": 50.25,
        "apex_createdat": "2001-02-03T04:05:06Z",
        **extra,
    }


class Recorder:
    """Runs batches and reads, keeping everything observable with ids and clock times
    replaced by stable placeholders."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self.seen: list[Any] = []
        self._ids: dict[str, str] = {}

    def batch(self, items: list[Part], prefer: str | None = "odata.continue-on-error") -> list[Any]:
        body, content_type = encode_batch_request(items)
        headers = {"Content-Type": content_type} | ({"Prefer": prefer} if prefer else {})
        response = self.client.post("$batch", content=body, headers=headers)
        answers = decode_batch_response(response.content, response.headers["content-type"])
        kept = [response.status_code, self._headers(response.headers.items())]
        kept.append([self._answer(a) for a in answers])
        self.seen.append(self._stable(kept))
        return [self._answer(a) for a in flatten_responses(answers)]

    def read(self, url: str, **headers: str) -> Any:
        response = self.client.get(url, headers=headers)
        data = response.json()
        for entry in data.get("value", []):
            if "auditid" in entry:
                entry.pop("@odata.etag")  # an audit's version is its clock time
        self.seen.append(self._stable([response.status_code, data]))
        return data

    def _answer(self, item: BatchResponseItem | ChangeSetResponse) -> Any:
        if isinstance(item, ChangeSetResponse):
            return [self._answer(i) for i in item.items]
        body = json.loads(item.body) if item.body else None
        return [item.status, self._headers(item.headers.items()), body, item.content_id]

    def _headers(self, items: Any) -> dict[str, str]:
        kept = {k.lower(): v for k, v in items if k.lower() not in _VOLATILE}
        if "content-type" in kept:
            kept["content-type"] = re.sub(r"boundary=\S+", "boundary=B", kept["content-type"])
        return kept

    def _stable(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: self._stable(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._stable(v) for v in value]
        if isinstance(value, str):
            text = _GUID.sub(
                lambda m: self._ids.setdefault(m.group(0).lower(), f"<id{len(self._ids)}>"), value
            )
            return _NOW.sub("<now>", text)
        return value


def run_both(
    emulator: RunningEmulator,
    client: httpx.Client,
    monkeypatch: pytest.MonkeyPatch,
    scenario: Callable[[Recorder], None],
) -> list[Any]:
    """The scenario with the shortcut and without it, each on a fresh store; the first run's
    record, once both are shown to be the same."""
    records = []
    shortcut = batch_upserts.Upserts._keyed
    taken: list[int] = []

    def counted(self: batch_upserts.Upserts, *args: Any) -> Any:
        taken.append(1)
        return shortcut(self, *args)

    monkeypatch.setattr(batch_upserts.Upserts, "_keyed", counted)
    for fast in (True, False):
        monkeypatch.setattr(batch_upserts, "FAST_PATH", fast)
        assert httpx.post(f"{emulator.url}/_emulator/reset", json={}, timeout=10).status_code == 200
        create_metrics_table(client)
        recorder = Recorder(client)
        scenario(recorder)
        records.append(recorder.seen)
        assert bool(taken) == fast  # the shortcut ran, or not at all
        taken.clear()
    assert records[0] == records[1]
    return records[0]


def statuses(answers: list[Any]) -> list[Any]:
    return [[s[0] for s in a] if isinstance(a[0], list) else a[0] for a in answers]


def test_engine_batches_create_then_update(
    emulator: RunningEmulator, client: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcome: dict[str, Any] = {}

    def scenario(rec: Recorder) -> None:
        parts: list[Part] = [upsert(f"r{n}", row(n)) for n in range(40)]
        outcome["create"] = rec.batch(parts)
        outcome["update"] = rec.batch([upsert(f"r{n}", row(n + 1)) for n in range(40)])
        rec.read(f"{SET}?$orderby=apex_runid")
        rec.read("audits")
        rec.read(SET + "?$select=apex_runid,apex_tokensin", Prefer="odata.track-changes")

    run_both(emulator, client, monkeypatch, scenario)
    assert statuses(outcome["create"]) == [201] * 40
    assert statuses(outcome["update"]) == [200] * 40
    first = outcome["update"][0]
    assert first[2]["apex_runid"] == "r0" and set(first[2]) == {
        "@odata.context", "@odata.etag", "apex_campaignmetricsid", "apex_runid"
    }  # fmt: skip
    assert first[1]["etag"] == 'W/"41"'  # versions 1..40 created the rows


def test_same_key_twice_bad_parts_and_conditions(
    emulator: RunningEmulator, client: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcome: dict[str, Any] = {}

    def scenario(rec: Recorder) -> None:
        rec.batch([upsert("old", row(0)), upsert("etag", row(9))])
        parts: list[Part] = [
            upsert("a", row(1)),
            upsert("a", row(2)),  # the same key twice: created, then updated
            upsert("Case", row(3)),
            upsert("CASE", {"apex_tokensin": 7}),  # the same row (keys ignore ASCII case)
            upsert("b", {"apex_nope": 1}),  # a bad part in the middle of the run
            upsert("c", b'{"apex_tokensin": '),  # not JSON
            upsert("d", {"apex_tokensin": "x"}),  # a wrong type
            upsert("e" * 65, row(4)),  # a key longer than the column
            upsert("f", row(5)),
            upsert("src", {"apex_runid": "moved", "apex_tokensin": 1}),  # the body's key wins
            upsert("moved", {"apex_tokensin": 2}),  # ... so this updates that row
            upsert("old", {"apex_tokensin": 3}, If_None_Match="*"),  # 412: it exists
            upsert("new", {"apex_tokensin": 3}, If_None_Match="*"),
            upsert("ghost", {"apex_tokensin": 3}, If_Match="*"),  # 404: no such row
            upsert("old", {"apex_tokensin": 4}, If_Match='W/"1"'),  # the right version
            upsert("old", {"apex_tokensin": 5}, If_Match='W/"1"'),  # now a stale one: 412
            upsert("etag", {"apex_tokensin": 6}, If_Match="junk"),  # 400
            upsert("n1", {"@odata.type": "x", "apex_tokensin": None, "versionnumber": 5}),
            upsert("n2", {"apex_tokensin": 1, "apex_name@odata.bind": "x"}),  # 400
            upsert("n3", {"apex_successrate": 1.234, "apex_tokensin": 1}),  # 400: precision
            upsert("n4", {"apex_tokensin": 1, "apex_successrate": 1.234}),  # the same error
            upsert("n5", {"apex_costusd": -1}),  # 400: out of range
            upsert("n6", b"[1]"),  # 400: not an object
            upsert("Ärger", row(6)),
            upsert("ärger", row(7)),  # not the same key: NOCASE folds ASCII only
            upsert("g", row(8), query=""),  # every column in the answer
            upsert("g", row(8), query="?$select=apex_nope"),  # 400
            upsert("g", row(8), query="?$select=apex_runid,apex_costusd&$top=1"),
            BatchPart(
                "PATCH", f"{SET}(apex_runid='g')", {"Content-Type": "application/json"}, b"{}"
            ),
            BatchPart("PATCH", f"/api/data/v9.2/{SET}(apex_runid='h%20i')", ENGINE, b"{}"),
            BatchPart(
                "PATCH", f"http://host/api/data/v9.2/{SET}(apex_runid='j'){SELECT}", ENGINE, b"{}"
            ),
            BatchPart(
                "PATCH",
                f"/api/data/v9.2/{SET}(3f2b4c1a-0000-4000-8000-00000000abcd)",
                ENGINE,
                b"{}",
            ),
            BatchPart("PATCH", f"/api/data/v9.2/{SET}(apex_tokensin=1)", ENGINE, b"{}"),
            BatchPart("PATCH", "/api/data/v9.2/nosuchset(apex_runid='k')", ENGINE, b"{}"),
            BatchPart("PATCH", f"/api/data/v9.2/{SET}(apex_runid='k')/apex_name", ENGINE, b"{}"),
        ]
        outcome["mixed"] = rec.batch(parts)
        rec.read(f"{SET}?$orderby=apex_runid")
        rec.read("audits")

    run_both(emulator, client, monkeypatch, scenario)
    got = statuses(outcome["mixed"])
    assert got[:4] == [201, 200, 201, 200]
    assert got[4:8] == [400, 400, 400, 400]
    assert got[8:11] == [201, 201, 200]
    assert got[11:17] == [412, 201, 404, 200, 412, 400]
    assert got[17:23] == [201, 400, 400, 400, 400, 400]
    assert got[23:25] == [201, 201]
    assert got[25:29] == [201, 400, 200, 204]
    assert got[29:] == [201, 201, 201, 400, 404, 405]  # these take the usual way


def test_other_parts_between_upserts_are_seen(
    emulator: RunningEmulator, client: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A create, a delete, a read, a failed change set and a duplicate check in the middle of
    a run of upserts: each upsert after them sees what they did (or undid)."""
    outcome: dict[str, Any] = {}
    detect = {"MSCRM.SuppressDuplicateDetection": "false"}

    def scenario(rec: Recorder) -> None:
        flags = {"IsDuplicateDetectionEnabled": {"Value": True}}
        rec.client.put(f"EntityDefinitions(LogicalName='{TABLE}')", json=flags)
        rec.batch([upsert("gone", row(1)), upsert("kept", row(2))])
        failing = ChangeSet(
            [
                BatchPart(
                    "PATCH", f"{SET}(apex_runid='cs1')", ENGINE, b'{"apex_tokensin": 1}', "1"
                ),
                BatchPart("PATCH", f"{SET}(apex_runid='cs2')", ENGINE, b'{"apex_nope": 1}', "2"),
            ]
        )
        passing = ChangeSet(
            [BatchPart("PATCH", f"{SET}(apex_runid='cs3')", ENGINE, b'{"apex_tokensin": 1}', "1")]
        )
        parts: list[Part] = [
            upsert("p0", row(3)),
            BatchPart(
                "POST", SET, {"Content-Type": "application/json"}, b'{"apex_runid": "posted"}'
            ),
            upsert("posted", {"apex_tokensin": 9}),  # 200: the POST made it
            BatchPart("DELETE", f"{SET}(apex_runid='gone')"),
            upsert("gone", row(4)),  # 201: the DELETE removed it
            upsert("kept", row(5)),
            BatchPart("GET", f"{SET}(apex_runid='kept')?$select=apex_tokensin"),
            failing,
            upsert("cs1", row(6)),  # 201: the change set was rolled back
            passing,
            upsert("cs3", row(7)),  # 200
            upsert("twin", {"apex_name": "name 5"}, **detect),  # 500: kept has that name
            upsert("kept", {"apex_name": "name 5"}, **detect),  # itself: no duplicate
            upsert("solo", {"apex_name": "unique"}, **detect),
        ]
        outcome["mixed"] = rec.batch(parts)
        outcome["stop"] = rec.batch(
            [upsert("s1", row(1)), upsert("s2", {"apex_nope": 1}), upsert("s3", row(3))],
            prefer=None,
        )
        rec.read(f"{SET}?$orderby=apex_runid")
        rec.read("audits")
        rec.read(SET + "?$select=apex_runid", Prefer="odata.track-changes")

    run_both(emulator, client, monkeypatch, scenario)
    got = statuses(outcome["mixed"])
    assert got == [201, 204, 200, 204, 201, 200, 200, 400, 201, 201, 200, 500, 200, 201]
    assert statuses(outcome["stop"]) == [400]


def test_audits_read_back_after_a_batch(client: httpx.Client, table: str) -> None:
    parts: list[Part] = [upsert("au", {"apex_tokensin": 1, "apex_successrate": 12.5})]
    parts.append(upsert("au", {"apex_tokensin": 2, "apex_phase": 'é"\\'}))
    body, content_type = encode_batch_request(parts)
    answer = client.post("$batch", content=body, headers={"Content-Type": content_type})
    assert answer.status_code == 200
    entries = client.get("audits", params={"$orderby": "createdon"}).json()["value"]
    assert [e["action"] for e in entries] == [1, 2]
    created = json.loads(entries[0]["changedata"])["changedAttributes"]
    assert created == [
        {"logicalName": "apex_tokensin", "oldValue": None, "newValue": 1},
        {"logicalName": "apex_successrate", "oldValue": None, "newValue": 12.5},
        {"logicalName": "apex_runid", "oldValue": None, "newValue": "au"},
    ]
    assert entries[1]["changedata"] == (
        '{"changedAttributes": [{"logicalName": "apex_tokensin", "oldValue": 1, "newValue": 2},'
        ' {"logicalName": "apex_phase", "oldValue": null, "newValue": "\\u00e9\\"\\\\"}]}'
    )
    for entry in entries:
        assert uuid.UUID(entry["auditid"])


def test_value_helpers_match_the_standard_library() -> None:
    """The hand-written JSON, id and date helpers give the text the slower originals give."""
    import math
    from datetime import UTC, datetime
    from unittest import mock

    from apex_metrics.emulator import messages, store, values
    from apex_metrics.emulator.errors import ApiError
    from apex_metrics.emulator.metadata import Attribute

    kinds = ["String", "Integer", "BigInt", "Decimal", "Double", "Money", "DateTime", "Boolean"]
    samples = [None, 0, -7, 2**70, 0.1, -0.0, 1e300, math.inf, math.nan, 'é"\\\n', True, 3.0]
    for kind in kinds:
        for precision in (None, 2):
            attr = Attribute("n", "N", kind, precision=precision)
            for value in samples:
                try:
                    expected = json.dumps(values.to_json(attr, value))
                except (TypeError, ValueError) as exc:
                    expected = type(exc).__name__
                try:
                    got = values.json_of(attr, value)
                except (TypeError, ValueError) as exc:
                    got = type(exc).__name__
                assert got == expected, (kind, precision, value)

    def slow_datetime(text: str) -> str:
        moment = datetime.fromisoformat(text)
        moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    attributes = {
        f"c{i}": Attribute(f"c{i}", "C", kind, precision=2) for i, kind in enumerate(kinds)
    }
    for i in range(len(kinds)):
        attributes[f"c{i}"].is_custom = i % 3 != 0
    for shift in range(len(samples)):
        old = {name: samples[(i + shift) % len(samples)] for i, name in enumerate(attributes)}
        new = {name: samples[(i * 5 + shift) % len(samples)] for i, name in enumerate(attributes)}
        for name, attr in attributes.items():
            if attr.kind in ("Decimal", "Money"):  # to_json cannot round text
                old[name] = 1.5 if isinstance(old[name], str) else old[name]
                new[name] = 1.5 if isinstance(new[name], str) else new[name]
        created = [
            {"logicalName": k, "oldValue": None, "newValue": values.to_json(attributes[k], v)}
            for k, v in new.items()
        ]
        updated = [
            {
                "logicalName": k,
                "oldValue": values.to_json(attributes[k], old.get(k)),
                "newValue": values.to_json(attributes[k], v),
            }
            for k, v in new.items()
        ]
        deleted = [
            {"logicalName": k, "oldValue": values.to_json(a, old.get(k)), "newValue": None}
            for k, a in attributes.items()
            if a.is_custom and old.get(k) is not None
        ]
        assert values.created_text(attributes, new) == json.dumps({"changedAttributes": created})
        assert values.updated_text(attributes, old, new) == json.dumps(
            {"changedAttributes": updated}
        )
        assert values.deleted_text(attributes, old) == json.dumps({"changedAttributes": deleted})

    texts = ["2026-01-31T23:59:59Z", "0999-01-01T00:00:00Z", "2026-02-30T00:00:00Z"]
    texts += ["2026-01-01T24:00:00Z", "2026-01-01T00:00:60Z", "2026-01-01T10:00:00+02:00"]
    for text in texts:
        try:
            expected = slow_datetime(text)
        except ValueError:
            expected = "ValueError"
        try:
            got = values.parse_datetime(text)
        except ValueError:
            got = "ValueError"
        assert got == expected, text

    for body in [
        b"{}",
        b' {"a": 1} ',
        b'{"a": 1}x',
        b'{"a": NaN}',
        b"{",
        b"[1]",
        b"",
        b"\xef\xbb\xbf{}",
    ]:
        try:
            expected = ("ok", json.loads(body or b"null", parse_constant=messages._reject_constant))
        except ValueError as exc:
            expected = ("error", f"The request body is not valid JSON: {str(exc)[:200]}")
        try:
            got = ("ok", messages.decode_json(body))
        except ApiError as exc:
            got = ("error", exc.message)
        assert got == expected, body

    ns = 1_700_000_000_123_456_789
    for n in range(200):
        raw = uuid.uuid4().bytes[:8]
        last = mock.patch.object(store, "_last_ns", [0])  # as if no id was made yet
        with last, mock.patch("os.urandom", return_value=raw), mock.patch("time.time_ns") as now:
            now.return_value = ns + 1000 * n
            expected = str(uuid.UUID(int=((ns + 1000 * n) << 64) | int.from_bytes(raw)))
            assert store.audit_id() == expected
            now.return_value = ns  # the clock went back: one more than the last id's time
            assert store.new_row_id() == str(
                uuid.UUID(int=((ns + 1000 * n + 1) << 64) | int.from_bytes(raw))
            )


def test_check_body_plans_answer_as_its_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """check_body works out per list of column names what to do with each; its answers and
    errors are those of its name-by-name loop, also once the table gains a column."""
    from apex_metrics.emulator import rows
    from apex_metrics.emulator.api import audit_entity
    from apex_metrics.emulator.errors import ApiError
    from apex_metrics.emulator.metadata import Attribute

    entity = audit_entity()
    entity.attributes["flag"] = Attribute("flag", "Flag", "Boolean")
    entity.attributes["odd"] = Attribute("odd", "Odd", "Picklist")  # no conversion for it
    bodies: list[Any] = [
        {"action": 1, "changedata": "x", "_objectid_value": "y"},
        {"action": 2, "changedata": None, "_objectid_value": "x" * 101},  # too long
        {"action": "x", "changedata": 1, "_objectid_value": "y"},
        {"changedata": 1, "action": "x"},
        {"@odata.etag": "x", "createdon": "2001-01-01T00:00:00Z", "flag": True},
        {"flag": 1},
        {"action": 1, "later": 2},
        {"action": "x", "nope@odata.bind": 2},
        {"odd": 1},
        {"odd": None},
        [1],
    ]

    def answers() -> list[Any]:
        out: list[Any] = []
        for body in bodies * 2:
            try:
                out.append(rows.check_body(entity, body))
            except ApiError as exc:
                out.append((exc.status, exc.code, exc.message))
        return out

    for grown in (False, True):
        if grown:
            entity.attributes["later"] = Attribute("later", "Later", "Integer")
        planned = answers()
        with monkeypatch.context() as patch:
            patch.setattr(rows._CHECK_PLANS, "get", lambda attributes, names: None)
            assert planned == answers()
    assert planned[6] == {"action": 1, "later": 2}
