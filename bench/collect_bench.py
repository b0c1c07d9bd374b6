"""Collect benchmark: spans/s and runs/s through ``apex-metrics collect`` (OTLP/HTTP protobuf),
next to the OpenTelemetry SDK exporter's own rate in the same run.

    .venv/bin/python bench/collect_bench.py                    # 4 exporters x 2,000 traces
    .venv/bin/python bench/collect_bench.py --exporters 2 --traces 5000

Each trace is one agent run made by the real SDK: an ``invoke_agent`` root span and
``--calls`` (10) ``chat`` calls on gpt-4o with random token counts (priced by genai-prices).
Each exporter process builds its traces first (not timed), then sends them with the SDK's
``OTLPSpanExporter`` in batches of 512 spans (the BatchSpanProcessor's default), all exporters
at once. Timed twice, each against a fresh server:

1. baseline: a null OTLP/HTTP server (reads the body, answers an empty 200): the exporters'
   own rate (SDK encoding + HTTP) on this machine;
2. ``apex-metrics collect`` against a scratch database: every answer comes after the runs it
   touched are committed, and the run ends when every run is in ``campaign_metrics``.

3. ``collect`` fed the same kind of requests encoded ahead by the SDK's own encoder and sent by
   ``--senders`` (8) keep-alive connections: what collect and PostgreSQL take when the
   exporters' CPU (most of run 2's, on two cores) is not spent on the same machine. The goal
   (>= 10,000 spans/s: collect is never the bottleneck of one agent host) is judged here; exit
   status 1 when it is missed.

Prints spans/s and runs/s of each and the collect/baseline ratio. Not a test: figures vary
with the machine and its load (collect, PostgreSQL and the exporters share the cores).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import random
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import psycopg
from psycopg import conninfo

from apex_metrics import db

NULL_SERVER = """
import sys, uvicorn
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/x-protobuf")]})
    await send({"type": "http.response.body", "body": b""})
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server on {port} did not start") from None
            time.sleep(0.05)


def build_traces(worker: int, traces: int, calls: int) -> list[object]:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": f"bench-{worker}"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("bench")
    rng = random.Random(worker)
    for _ in range(traces):
        with tracer.start_as_current_span(
            "invoke_agent bench", attributes={"gen_ai.operation.name": "invoke_agent"}
        ):
            for _ in range(calls):
                with tracer.start_as_current_span(
                    "chat gpt-4o",
                    attributes={
                        "gen_ai.operation.name": "chat",
                        "gen_ai.provider.name": "openai",
                        "gen_ai.request.model": "gpt-4o",
                        "gen_ai.response.model": "gpt-4o-2024-08-06",
                        "gen_ai.usage.input_tokens": rng.randint(200, 4000),
                        "gen_ai.usage.output_tokens": rng.randint(20, 800),
                    },
                ):
                    pass
    provider.shutdown()
    return list(memory.get_finished_spans())


def exporter_process(
    worker: int, traces: int, calls: int, endpoint: str, ready: object, go: object, out: object
) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import SpanExportResult

    spans = build_traces(worker, traces, calls)
    exporter = OTLPSpanExporter(endpoint=endpoint, timeout=60)
    ready.release()  # type: ignore[attr-defined]
    go.wait()  # type: ignore[attr-defined]
    started = time.perf_counter()
    for i in range(0, len(spans), 512):
        if exporter.export(spans[i : i + 512]) is not SpanExportResult.SUCCESS:
            raise SystemExit(f"exporter {worker}: export failed")
    out.put((len(spans), time.perf_counter() - started))  # type: ignore[attr-defined]
    exporter.shutdown()


def run_exporters(endpoint: str, exporters: int, traces: int, calls: int) -> tuple[int, float]:
    """Start every exporter, wait until all have built their spans, then time the sending."""
    ctx = mp.get_context("spawn")
    ready, go, out = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=exporter_process, args=(w, traces, calls, endpoint, ready, go, out))
        for w in range(exporters)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        ready.acquire()
    started = time.perf_counter()
    go.set()
    results = [out.get(timeout=3600) for _ in procs]
    elapsed = time.perf_counter() - started
    for p in procs:
        p.join()
        if p.exitcode:
            raise SystemExit(f"an exporter failed (exit {p.exitcode})")
    return sum(n for n, _ in results), elapsed


def execute(url: str, query: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(query)  # type: ignore[arg-type]


def count_runs(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM campaign_metrics").fetchone()
    return int(row[0]) if row else 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(2)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


def encoded_requests(exporters: int, traces: int, calls: int) -> tuple[list[bytes], int]:
    """The bodies the SDK exporter would send (its own encoder), built ahead: (bodies, spans)."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    bodies: list[bytes] = []
    spans = 0
    for worker in range(exporters):
        built = build_traces(100 + worker, traces, calls)
        spans += len(built)
        for i in range(0, len(built), 512):
            bodies.append(encode_spans(built[i : i + 512]).SerializeToString())
    return bodies, spans


async def replay(endpoint: str, bodies: list[bytes], senders: int) -> None:
    """POST every body, ``senders`` at a time, each on its own keep-alive connection."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    headers = {"content-type": "application/x-protobuf"}

    async def sender() -> None:
        async with httpx.AsyncClient(timeout=60) as client:
            while not queue.empty():
                answer = await client.post(endpoint, content=queue.get_nowait(), headers=headers)
                answer.raise_for_status()

    await asyncio.gather(*(sender() for _ in range(senders)))


class Collect:
    """``apex-metrics collect`` on a scratch database, for one timed run."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.name = f"apex_bench_{uuid.uuid4().hex[:8]}"
        params = conninfo.conninfo_to_dict(admin_url)
        params["dbname"] = self.name
        self.url = conninfo.make_conninfo("", **{k: str(v) for k, v in params.items()})
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}/v1/traces"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Collect:
        execute(self.admin_url, f'CREATE DATABASE "{self.name}"')
        asyncio.run(db.migrate(self.url))
        apex = str(Path(sys.executable).with_name("apex-metrics"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("APEX_")}
        self.proc = subprocess.Popen(
            [apex, "collect", "--port", str(self.port), "--database-url", self.url],
            env=env, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        wait_listening(self.port, self.proc)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.proc is not None:
                stop(self.proc)
        finally:
            execute(self.admin_url, f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    def wait_written(self, expected: int, started: float) -> tuple[int, float]:
        """Runs written and seconds since ``started`` once ``expected`` are in (or 600 s)."""
        while count_runs(self.url) < expected and time.perf_counter() - started < 600:
            time.sleep(0.05)
        return count_runs(self.url), time.perf_counter() - started

    def cpu(self) -> float:
        assert self.proc is not None
        return cpu_seconds(self.proc.pid)


GOAL = 10_000.0  # spans/s through collect on one agent host


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--exporters", type=int, default=4, help="exporter processes at once")
    parser.add_argument("--traces", type=int, default=2000, help="traces per exporter")
    parser.add_argument("--calls", type=int, default=10, help="model calls per trace")
    parser.add_argument("--senders", type=int, default=8, help="connections of the replay run")
    parser.add_argument(
        "--admin-url",
        default=os.environ.get(
            "APEX_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    args = parser.parse_args()
    total_traces = args.exporters * args.traces
    print(
        f"{args.exporters} exporters x {args.traces:,} traces x ({args.calls} chat calls + 1 "
        f"agent span) = {total_traces * (args.calls + 1):,} spans, protobuf, batches of 512"
    )

    port = free_port()
    null = subprocess.Popen([sys.executable, "-c", NULL_SERVER, str(port)])
    try:
        wait_listening(port, null)
        spans, base_s = run_exporters(
            f"http://127.0.0.1:{port}/v1/traces", args.exporters, args.traces, args.calls
        )
    finally:
        stop(null)

    with Collect(args.admin_url) as collect:
        cpu_before = collect.cpu()
        started = time.perf_counter()
        spans_c, send_s = run_exporters(collect.endpoint, args.exporters, args.traces, args.calls)
        written, collect_s = collect.wait_written(total_traces, started)
        collect_s = max(send_s, collect_s)
        collect_cpu = collect.cpu() - cpu_before
        metrics = httpx.get(f"http://127.0.0.1:{collect.port}/metrics").text

    bodies, spans_r = encoded_requests(args.exporters, args.traces, args.calls)
    with Collect(args.admin_url) as collect:
        cpu_before = collect.cpu()
        started = time.perf_counter()
        asyncio.run(replay(collect.endpoint, bodies, args.senders))
        written_r, replay_s = collect.wait_written(total_traces, started)
        replay_cpu = collect.cpu() - cpu_before

    unpriced = [ln for ln in metrics.splitlines() if ln.startswith("apex_collect_unpriced")]
    rejected = [ln for ln in metrics.splitlines() if ln.startswith("apex_collect_spans_rejected_t")]
    print(f"baseline: SDK exporter -> null server  {spans / base_s:>10,.0f} spans/s  "
          f"{total_traces / base_s:>8,.0f} traces/s  ({base_s:.2f} s)")  # fmt: skip
    print(
        f"apex-metrics collect (runs committed)  {spans_c / collect_s:>10,.0f} spans/s  "
        f"{written / collect_s:>8,.0f} runs/s  ({collect_s:.2f} s, {written:,} runs)"
    )
    print(f"collect's own CPU time                 {spans_c / collect_cpu:>10,.0f} spans per "
          f"CPU-second ({collect_cpu:.2f} s; PostgreSQL, exporters not counted)")  # fmt: skip
    print(f"collect / baseline                     {base_s / collect_s:>10.2f}")
    replay_rate = spans_r / replay_s
    print(
        f"collect fed pre-encoded requests       {replay_rate:>10,.0f} spans/s  "
        f"{written_r / replay_s:>8,.0f} runs/s  ({replay_s:.2f} s, {written_r:,} runs; the "
        f"SDK's own encoding, sent ahead by {args.senders} connections; collect's CPU "
        f"{replay_cpu:.2f} s) (goal >= {GOAL:,.0f})"
    )
    print(f"rejected: {rejected or ['0']}; unpriced: {unpriced or ['none']}")
    ok = written == written_r == total_traces and replay_rate >= GOAL
    if written != total_traces or written_r != total_traces:
        print(f"WARNING: {written:,} / {written_r:,} runs written, {total_traces:,} expected")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
