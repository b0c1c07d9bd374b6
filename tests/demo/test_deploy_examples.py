"""deploy/: the systemd units and the reverse-proxy examples agree with the CLI, the settings
and each other (the app under a root path with forwarded headers is tested in
tests/panel/test_proxy_assets.py and test_browser_layout.py; the examples run, in real nginx and
Caddy in front of the panel, in tests/panel/test_proxy_live.py)."""

from __future__ import annotations

import configparser
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from apex_metrics.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))


def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser


def environment(path: Path) -> dict[str, str]:
    lines = [line for line in path.read_text().splitlines() if line.startswith("Environment=")]
    return dict(line.removeprefix("Environment=").split("=", 1) for line in lines)


def test_a_unit_for_sync_panel_and_collect() -> None:
    assert [u.name for u in UNITS] == [
        "apex-metrics-collect.service", "apex-metrics-panel.service",
        "apex-metrics-sync.service",
    ]  # fmt: skip


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.stem)
def test_units_run_real_commands_with_known_flags_and_settings(path: Path) -> None:
    service = unit(path)["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[0] == "/opt/apex-metrics/.venv/bin/apex-metrics"
    words = [a for a in argv[1:] if not a.startswith("-")]
    command = words[:1]
    helps = subprocess.run(
        [sys.executable, "-m", "apex_metrics", *command, "--help"],
        capture_output=True, text=True, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert helps.returncode == 0, helps.stderr
    for flag in (a.split("=")[0] for a in argv[1:] if a.startswith("--")):
        assert flag in helps.stdout, f"{path.name}: {flag} is not an option of {command}"
    known = {f"APEX_{name.upper()}" for name in Settings.model_fields}
    for name in environment(path):
        assert name in known, f"{path.name}: {name} is not a setting"
    assert service["Restart"] == "always" and service["KillSignal"] == "SIGTERM"


def test_the_sync_unit_in_the_docs_is_the_shipped_one() -> None:
    doc = (ROOT / "docs" / "operations.md").read_text()
    shipped = (DEPLOY / "systemd" / "apex-metrics-sync.service").read_text()
    body = shipped[shipped.index("[Unit]") :].strip()
    assert body in doc


def test_proxy_examples_match_the_panel_unit() -> None:
    env = environment(DEPLOY / "systemd" / "apex-metrics-panel.service")
    prefix = env["APEX_PANEL_ROOT_PATH"]
    upstream = f"127.0.0.1:{env['APEX_PANEL_PORT']}"
    assert env["APEX_PANEL_HOST"] == "127.0.0.1" == env["APEX_PANEL_FORWARDED_ALLOW_IPS"]

    nginx = (DEPLOY / "nginx" / "apex-metrics-panel.conf").read_text()
    assert f"location {prefix}/ {{" in nginx and f"location = {prefix} {{" in nginx
    assert f"return 308 {prefix}/$is_args$args;" in nginx  # the query string is kept
    assert f"proxy_pass http://{upstream};" in nginx  # prefix passed on (no URI part)
    events = nginx[nginx.index(f"location = {prefix}/api/events") :].split("}", 1)[0]
    assert "proxy_buffering off;" in events and "gzip off;" in events
    assert nginx.count("proxy_set_header X-Forwarded-Proto $scheme;") == 2
    assert nginx.count("proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;") == 2
    # A loopback panel refuses other Host names (tests/panel/test_proxy_assets.py): the
    # examples send the upstream's.
    assert nginx.count("proxy_set_header Host $proxy_host;") == 2
    assert "proxy_set_header Host $host" not in nginx

    caddy = (DEPLOY / "caddy" / "Caddyfile").read_text()
    assert f"@panel path {prefix} {prefix}/*" in caddy and "handle @panel {" in caddy
    assert f"reverse_proxy {upstream}" in caddy
    assert "flush_interval -1" in caddy and "header_up Host {upstream_hostport}" in caddy
    # The panel redirects the bare prefix, keeping the query string (Caddy's redir drops it).
    assert not re.search(r"^\s*redir ", caddy, re.M)
