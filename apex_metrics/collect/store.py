"""The traces held in memory while their spans arrive, within fixed bounds (docs/ingest.md,
"Limits"). Runs in one event loop: no locks.

- ``admit`` counts a request's spans (dedupe by span id within a trace), or refuses the whole
  request with ``Unavailable`` (503, retried by exporters) when the caps leave no room for it.
- A trace idle for ``idle_seconds`` is finalised: written if it has unwritten changes, then
  dropped and remembered as finished (spans arriving later for it are rejected as late).
- Under pressure the least recently active traces that are already written are dropped first;
  traces with unwritten changes are never dropped (the writer has to catch up).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from time import monotonic

from apex_metrics.collect.errors import Unavailable
from apex_metrics.collect.runs import TraceRun
from apex_metrics.collect.spans import Rejected, SpanFacts


@dataclass(frozen=True, slots=True)
class Limits:
    """How much the collector holds. Defaults are documented in docs/ingest.md."""

    max_body_bytes: int = 20 * 1024 * 1024  # OTLP's recommended 20 MiB, after gunzip too
    idle_seconds: float = 30.0
    max_traces: int = 100_000
    max_spans: int = 1_000_000  # span ids held over every trace
    max_spans_per_trace: int = 10_000
    max_finished: int = 100_000  # finished trace ids remembered (late spans are rejected)


@dataclass(slots=True)
class Admission:
    accepted: int = 0
    duplicates: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    unpriced: list[str] = field(default_factory=list)
    dirty: bool = False  # some run now has changes to write


class TraceStore:
    def __init__(self, limits: Limits, clock: Callable[[], float] = monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self.traces: OrderedDict[bytes, TraceRun] = OrderedDict()  # least recently active first
        self.finished: OrderedDict[bytes, None] = OrderedDict()
        self.dirty: dict[bytes, TraceRun] = {}
        self.spans_held = 0

    def admit(self, facts: Iterable[SpanFacts]) -> Admission:
        """Count the spans of one request (all of them or, with ``Unavailable``, none)."""
        out = Admission()
        by_trace: dict[bytes, list[SpanFacts]] = {}
        for f in facts:
            if f.trace_id in self.finished:
                out.rejected.append(
                    Rejected(
                        f.trace_id,
                        f.span_id,
                        f"late: the trace was finished after {self.limits.idle_seconds:g} s "
                        "without new spans",
                    )
                )
            else:
                by_trace.setdefault(f.trace_id, []).append(f)
        new_traces = sum(1 for t in by_trace if t not in self.traces)
        new_spans = sum(len(v) for v in by_trace.values())
        self._make_room(new_traces, new_spans, keep=by_trace.keys())
        now = self.clock()
        cap = self.limits.max_spans_per_trace
        for trace_id, items in by_trace.items():
            run = self.traces.get(trace_id)
            if run is None:
                run = self.traces[trace_id] = TraceRun(trace_id, now)
            else:
                self.traces.move_to_end(trace_id)
                run.last_seen = now
            for f in items:
                if len(run) >= cap and f.span_id not in run.span_ids:
                    out.rejected.append(
                        Rejected(trace_id, f.span_id, f"the trace has more than {cap} spans")
                    )
                    continue
                if run.add(f):
                    out.accepted += 1
                    self.spans_held += 1
                    if f.unpriced is not None:
                        out.unpriced.append(f.unpriced)
                else:
                    out.duplicates += 1
            if run.dirty:
                self.dirty[trace_id] = run
                out.dirty = True
        return out

    def _make_room(self, new_traces: int, new_spans: int, keep: Iterable[bytes]) -> None:
        limits = self.limits
        if new_spans > limits.max_spans or new_traces > limits.max_traces:
            raise Unavailable(
                f"this request alone holds more than the collector's caps ({limits.max_traces} "
                f"traces, {limits.max_spans} spans)",
                hint="send smaller batches",
            )

        def full() -> bool:
            return (
                len(self.traces) + new_traces > limits.max_traces
                or self.spans_held + new_spans > limits.max_spans
            )

        if not full():
            return
        kept = set(keep)
        for trace_id, run in list(self.traces.items()):
            if not full():
                return
            if trace_id in kept or run.dirty:
                continue
            if run.relevant and run.written_run_id is None:
                self.finalise(run)  # write it first; it can be dropped once written
                continue
            self.drop(run)
        if full():
            raise Unavailable(
                f"the collector holds its maximum ({limits.max_traces} traces or "
                f"{limits.max_spans} spans) and is still writing them",
                hint="retry shortly; raise APEX_COLLECT_MAX_SPANS if this persists",
            )

    def finalise(self, run: TraceRun) -> None:
        """No more spans are expected: settle the run id (write it now if it needs writing)."""
        run.finalising = True
        if run.dirty:
            self.dirty[run.trace_id] = run

    def drop(self, run: TraceRun) -> None:
        self.traces.pop(run.trace_id, None)
        self.dirty.pop(run.trace_id, None)
        self.spans_held -= len(run)
        self.finished[run.trace_id] = None
        while len(self.finished) > self.limits.max_finished:
            self.finished.popitem(last=False)

    def sweep(self) -> None:
        """Finalise traces idle for ``idle_seconds``; drop those with nothing left to write."""
        deadline = self.clock() - self.limits.idle_seconds
        for run in list(self.traces.values()):
            if run.last_seen > deadline:
                break  # ordered by activity: the rest are more recent
            if run.dirty:
                self.finalise(run)
            elif run.relevant and run.written_run_id is None:
                self.finalise(run)
                if not run.dirty:
                    self.drop(run)
            else:
                self.drop(run)

    def finalise_all(self) -> None:
        """Shutdown: every run held gets written as it stands."""
        for run in self.traces.values():
            self.finalise(run)

    def take_dirty(self) -> list[TraceRun]:
        runs = [run for run in self.dirty.values() if run.dirty]
        self.dirty.clear()
        return runs

    def give_back(self, runs: Iterable[TraceRun]) -> None:
        """Runs a failed write did not store: dirty again."""
        for run in runs:
            if run.dirty and run.trace_id in self.traces:
                self.dirty[run.trace_id] = run
