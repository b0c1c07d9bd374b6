"""docs/configuration.md lists every Settings field, with its default."""

from __future__ import annotations

import re
from pathlib import Path

from apex_metrics.settings import Settings, env_name

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
ROW = re.compile(r"^\| `(APEX_[A-Z0-9_]+)` \| ([^|]*) \| ([^|]+) \|$")


def documented() -> dict[str, tuple[str, str]]:
    rows = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        match = ROW.match(line.strip())
        if match:
            rows[match.group(1)] = (match.group(2).strip(), match.group(3).strip())
    return rows


def test_every_setting_is_documented_with_its_default() -> None:
    rows = documented()
    for name, field in Settings.model_fields.items():
        var = env_name(name)
        assert var in rows, f"{var} is missing from docs/configuration.md"
        default, meaning = rows[var]
        assert meaning, f"{var} has no meaning in docs/configuration.md"
        if field.default is None:
            assert default.startswith("—"), f"{var}: default should be —"
        else:
            assert f"`{field.default}`" in default, f"{var}: default should be {field.default}"


def test_no_documented_setting_is_unknown() -> None:
    known = {env_name(name) for name in Settings.model_fields}
    assert set(documented()) <= known
