"""Unit tests of the solution-aware parts of provisioning and of the emulator's solution seeds."""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree

import pytest

from apex_metrics.dataverse.provision import ProvisionReport, Step
from apex_metrics.dataverse.solution import (
    HEADER,
    SolutionInfo,
    WrongPublisherPrefix,
    check_prefix,
    headers_for,
    publish_xml,
)
from apex_metrics.emulator.solutions import _published_entities, parse_seed

pytestmark = pytest.mark.unit


def test_the_contract_prefix_passes_in_any_spelling() -> None:
    for prefix in ("apex", "APEX", "apex_"):
        check_prefix("apexmetrics", "apexpublisher", prefix)


def test_another_prefix_is_refused_naming_it_and_what_to_do() -> None:
    with pytest.raises(WrongPublisherPrefix) as caught:
        check_prefix("sales", "contoso", "cont")
    error = caught.value
    assert "'cont'" in error.message and "contoso" in error.message
    assert "apex_" in error.message and "nothing was created" in error.message
    assert error.hint is not None
    assert "APEX_DATAVERSE_SOLUTION" in error.hint and "Prefix apex" in error.hint
    assert "PUBLISHER_PREFIX" in error.hint


def test_headers_name_the_solution_only_when_there_is_one() -> None:
    assert headers_for(None) == {}
    assert headers_for("") == {}
    assert headers_for("apexmetrics") == {HEADER: "apexmetrics"}
    assert HEADER == "MSCRM.SolutionUniqueName"


def test_publish_xml_follows_the_publish_request_schema() -> None:
    body = publish_xml("apex_campaignmetrics")
    root = ElementTree.fromstring(body["ParameterXml"])
    assert root.tag == "importexportxml"
    assert [e.text for e in root.findall("./entities/entity")] == ["apex_campaignmetrics"]
    assert _published_entities(body["ParameterXml"]) == ["apex_campaignmetrics"]


def test_report_shows_the_solution_check_and_warnings() -> None:
    report = ProvisionReport("https://org.example.test", dry_run=True)
    report.steps.append(Step("publish", "apex_campaignmetrics", "PublishXml"))
    report.solution = SolutionInfo("apexmetrics", "id", "Apex metrics", "apexpublisher", "apex")
    report.warnings.append("organization auditing is off: …")
    lines = report.lines()
    assert lines[0] == "[planned] publish apex_campaignmetrics: PublishXml"
    assert "[check] solution apexmetrics (Apex metrics): publisher apexpublisher" in lines[2]
    assert lines[3] == "[warning] organization auditing is off: …"
    data = report.to_dict()
    assert data["solution"]["prefix"] == "apex"
    assert data["warnings"] == ["organization auditing is off: …"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("apexmetrics=apex", ("apexmetrics", "apex")), (" Sales_1 = cont_ ", ("Sales_1", "cont"))],
)
def test_emulator_solution_seed(text: str, expected: tuple[str, str]) -> None:
    assert parse_seed(text) == expected


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("apexmetrics", "UNIQUENAME=PREFIX"),
        ("1abc=apex", "unique name"),
        ("my-solution=apex", "unique name"),
        ("ok=a", "prefix"),
        ("ok=toolongprefix", "prefix"),
        ("ok=mscrmx", "mscrm"),
        ("ok=9ab", "prefix"),
    ],
)
def test_emulator_solution_seed_errors(text: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        parse_seed(text)
