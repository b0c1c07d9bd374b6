"""Queries: $select, $filter, $orderby, $top, $count, paging, $apply, change tracking."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from apex_metrics.dataverse.multipart_encode import encode_batch_request
from apex_metrics.dataverse.multipart_parts import BatchPart
from apex_metrics.emulator import CostModel, EmulatorConfig
from apex_metrics.testing import running_emulator
from tests.emulator.conftest import SET, api_client, create_metrics_table


def load(client: httpx.Client, count: int, start: int = 0) -> None:
    """Upsert ``count`` rows through $batch (1,000 per request)."""
    for offset in range(start, start + count, 1000):
        parts = [
            BatchPart(
                "PATCH",
                f"{SET}(apex_runid='run-{i:05d}')",
                body=(
                    f'{{"apex_tokensin": {i}, "apex_campaignid": "c{i % 3}",'
                    f' "apex_costusd": {i / 1000}, "apex_phase": "{"odd" if i % 2 else "even"}"}}'
                ).encode(),
            )
            for i in range(offset, min(start + count, offset + 1000))
        ]
        body, content_type = encode_batch_request(parts)
        response = client.post("$batch", content=body, headers={"Content-Type": content_type})
        assert response.status_code == 200


def values(response: httpx.Response) -> list[dict[str, object]]:
    assert response.status_code == 200, response.text
    return list(response.json()["value"])


def test_select_filter_orderby_top(client: httpx.Client, table: str) -> None:
    load(client, 30)
    rows = values(
        client.get(
            SET,
            params={
                "$select": "apex_runid,apex_tokensin",
                "$filter": "apex_tokensin ge 10 and (apex_phase eq 'EVEN'"
                " or contains(apex_runid,'-0001')) and not startswith(apex_campaignid,'c2')",
                "$orderby": "apex_tokensin desc",
                "$top": "4",
            },
        )
    )
    assert [r["apex_tokensin"] for r in rows] == [28, 24, 22, 19]
    assert set(rows[0]) == {"@odata.etag", "apex_campaignmetricsid", "apex_runid", "apex_tokensin"}
    ends = values(
        client.get(SET, params={"$filter": "endswith(apex_runid,'29')", "$select": "apex_runid"})
    )
    assert [r["apex_runid"] for r in ends] == ["run-00029"]
    nulls = values(
        client.get(SET, params={"$filter": "apex_successrate eq null", "$count": "true"})
    )
    assert len(nulls) == 30
    wildcard = values(client.get(SET, params={"$filter": "contains(apex_runid,'%')"}))
    assert wildcard == []


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"$filter": "apex_nope eq 1"}, "Could not find a property named 'apex_nope'"),
        ({"$filter": "apex_tokensin eq"}, "Syntax error"),
        ({"$filter": "apex_tokensin eq 'x'"}, "incompatible types"),
        ({"$filter": "substringof('a',apex_runid)"}, "Unknown function"),
        ({"$filter": "tolower(apex_runid) eq 'a'"}, "not supported"),
        ({"$select": "apex_runid,apex_nope"}, "apex_nope"),
        ({"$orderby": "apex_runid sideways"}, "$orderby"),
        ({"$top": "-1"}, "$top"),
        ({"$skip": "10"}, "$skip"),
        ({"$skiptoken": "garbage"}, "$skiptoken"),
        ({"fetchXml": "<fetch/>"}, "fetchXml"),
        ({"$filter": "apex_tokensin eq 99999999999999999999999"}, "out of range"),
    ],
)
def test_bad_query_options_are_400(
    client: httpx.Client, table: str, params: dict[str, str], fragment: str
) -> None:
    response = client.get(SET, params=params)
    assert response.status_code == 400
    assert fragment in response.json()["error"]["message"]


def test_paging_with_maxpagesize_and_opaque_next_link(client: httpx.Client, table: str) -> None:
    load(client, 25)
    url: str | None = f"{SET}?$select=apex_runid&$top=3"
    seen: list[str] = []
    pages = 0
    while url:
        response = client.get(url, headers={"Prefer": "odata.maxpagesize=10"})
        assert response.headers["Preference-Applied"] == "odata.maxpagesize=10"
        body = response.json()
        seen += [r["apex_runid"] for r in body["value"]]
        url = body.get("@odata.nextLink")
        pages += 1
        if url:
            token = parse_qs(urlsplit(url).query)["$skiptoken"][0]
            assert token.startswith("<cookie pagenumber=")
    assert pages == 3  # $top is ignored when odata.maxpagesize is set
    assert sorted(seen) == [f"run-{i:05d}" for i in range(25)]


def test_count_is_capped_at_5000(client: httpx.Client, table: str) -> None:
    load(client, 5003)
    body = client.get(
        SET,
        params={"$count": "true", "$select": "apex_runid"},
        headers={
            "Prefer": "odata.maxpagesize=2,"
            'odata.include-annotations="Microsoft.Dynamics.CRM.totalrecordcount,'
            'Microsoft.Dynamics.CRM.totalrecordcountlimitexceeded"'
        },
    ).json()
    assert body["@odata.count"] == 5000
    assert body["@Microsoft.Dynamics.CRM.totalrecordcount"] == 5000
    assert body["@Microsoft.Dynamics.CRM.totalrecordcountlimitexceeded"] is True
    assert len(body["value"]) == 2
    plain = client.get(f"{SET}/$count")
    assert plain.headers["Content-Type"].startswith("text/plain")
    assert plain.text == "5000"
    small = client.get(f"{SET}/$count", params={"$filter": "apex_tokensin lt 7"})
    assert small.text == "7"


def test_apply_aggregate_and_groupby(client: httpx.Client, table: str) -> None:
    load(client, 9)
    total = values(
        client.get(
            SET,
            params={
                "$apply": "aggregate(apex_tokensin with sum as tokens,apex_costusd with max as top,"
                "$count as n)"
            },
        )
    )
    assert total == [{"tokens": 36, "top": 0.008, "n": 9}]
    groups = values(
        client.get(
            SET,
            params={
                "$apply": "filter(apex_tokensin gt 0)/groupby((apex_campaignid),"
                "aggregate(apex_tokensin with average as avg,$count as n))"
            },
        )
    )
    assert groups == [
        {"apex_campaignid": "c0", "avg": 4.5, "n": 2},
        {"apex_campaignid": "c1", "avg": 4.0, "n": 3},
        {"apex_campaignid": "c2", "avg": 5.0, "n": 3},
    ]
    for bad in [
        "groupby((apex_createdat))",
        "aggregate(apex_runid with countdistinct as n)",
        "aggregate(apex_nope with sum as n)",
        "aggregate(apex_tokensin with sum as n",
    ]:
        assert client.get(SET, params={"$apply": bad}).status_code == 400, bad
    ordered = client.get(
        SET, params={"$apply": "aggregate(apex_tokensin with sum as n)", "$orderby": "n"}
    )
    assert "SingleValueOpenPropertyAccess" in ordered.json()["error"]["message"]


def test_aggregate_record_limit() -> None:
    with running_emulator(
        EmulatorConfig(
            key_activation_delay_seconds=0, max_aggregate_records=10, costs=CostModel.free()
        )
    ) as emu:
        with api_client(emu) as client:
            create_metrics_table(client)
            load(client, 11)
            apply = "aggregate(apex_tokensin with sum as n)"
            response = client.get(SET, params={"$apply": apply})
            assert response.status_code == 400
            assert response.json()["error"] == {
                "code": "0x8004E023",
                "message": "The maximum record limit is exceeded. Reduce the number of records.",
            }
            narrow = client.get(SET, params={"$apply": f"filter(apex_tokensin lt 5)/{apply}"})
            assert values(narrow) == [{"n": 10}]


def test_change_tracking_with_delta_links(client: httpx.Client, table: str) -> None:
    load(client, 3)
    first = client.get(
        SET, params={"$select": "apex_runid"}, headers={"Prefer": "odata.track-changes"}
    )
    assert first.headers["Preference-Applied"] == "odata.track-changes"
    body = first.json()
    assert len(body["value"]) == 3
    delta = body["@odata.deltaLink"]
    assert "$deltatoken=" in delta
    assert values(client.get(delta)) == []

    client.patch(f"{SET}(apex_runid='run-00001')", json={"apex_tokensin": 100})
    client.patch(f"{SET}(apex_runid='new')", json={})
    gone = client.get(f"{SET}(apex_runid='run-00002')").json()["apex_campaignmetricsid"]
    client.delete(f"{SET}({gone})")
    token = parse_qs(urlsplit(delta).query)["$deltatoken"][0]
    counted = client.get(f"{SET}/$count", params={"$deltatoken": token})
    assert counted.text == "3"
    changes = client.get(delta).json()
    assert changes["@odata.context"].endswith("/$delta")
    changed = [r.get("apex_runid") for r in changes["value"] if "reason" not in r]
    deleted = [r for r in changes["value"] if r.get("reason") == "deleted"]
    assert sorted(changed) == ["new", "run-00001"]
    assert [d["id"] for d in deleted] == [gone]
    assert changes["value"][-1]["reason"] == "deleted"  # deletes come last
    assert values(client.get(changes["@odata.deltaLink"])) == []

    refused = client.get(
        SET, params={"$filter": "apex_tokensin gt 1"}, headers={"Prefer": "odata.track-changes"}
    )
    assert refused.status_code == 400
    assert "isn't supported when Change Tracking is enabled" in refused.json()["error"]["message"]


def test_top_without_page_size_has_no_next_link(client: httpx.Client, table: str) -> None:
    load(client, 5)
    for top, expected in (("0", 0), ("2", 2), ("9", 5)):
        body = client.get(SET, params={"$top": top, "$select": "apex_runid"}).json()
        assert len(body["value"]) == expected
        assert "@odata.nextLink" not in body
