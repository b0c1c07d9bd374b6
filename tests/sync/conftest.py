"""Fixtures of the sync engine tests: shared databases, a fake sink, the emulator over HTTP."""

from __future__ import annotations

import pytest

from apex_metrics.sync.fakes import FakeSink


@pytest.fixture
def fake_sink() -> FakeSink:
    return FakeSink()
