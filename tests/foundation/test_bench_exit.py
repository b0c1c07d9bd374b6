"""Every benchmark with a goal exits non-zero when it misses it (issue 18): ``bench/report.py``
counts exit statuses, so a benchmark that always exits 0 reports a missed goal as met."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
# Goals judged by exit status: every benchmark of bench/report.py.
WITH_GOALS = [
    "emulator_bench", "sync_bench", "collect_bench", "reliability_soak",
    "import_bench", "writers_bench", "panel_bench",
]  # fmt: skip


def exits_with_main(source: str) -> bool:
    """``if __name__ == "__main__": sys.exit(main())`` (or of ``asyncio.run(main())``)."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
            return any(
                isinstance(n, ast.Call) and ast.unparse(n.func) == "sys.exit"
                for n in ast.walk(node)
            )
    return False


@pytest.mark.unit
@pytest.mark.parametrize("name", WITH_GOALS)
def test_benchmark_exit_status_says_whether_its_goal_was_met(name: str) -> None:
    source = (BENCH / f"{name}.py").read_text()
    assert exits_with_main(source), f"bench/{name}.py: end with sys.exit(main())"
    tree = ast.parse(source)
    main = next(
        n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
        and n.name == "main"
    )  # fmt: skip
    assert main.returns is not None and ast.unparse(main.returns) == "int", name
    returns = [n for n in ast.walk(main) if isinstance(n, ast.Return) and n.value is not None]
    assert returns, f"bench/{name}.py: main() returns no status"
