"""Micro-benchmark of the ``$batch`` codec: encode and decode of 1,000-part batches.

    .venv/bin/python bench/multipart_bench.py [--parts 1000] [--repeat 30] [--changeset-size 100]

Times, in the process and without HTTP, each direction the sync uses: the client encoding its
upserts (``encode_upserts``) and reading the answer (``decode_upserts``), the emulator decoding
the request and encoding its answer; each with and without change sets. Every figure is the best
of ``--repeat`` runs (the machine is shared: the minimum is the least noisy), printed as
milliseconds per batch and microseconds per part. Answers are checked once, outside the clock.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from apex_metrics.dataverse.batching import decode_upserts, dumps, encode_upserts
from apex_metrics.dataverse.multipart_decode import decode_batch_request, decode_batch_response
from apex_metrics.dataverse.multipart_encode import encode_batch_request, encode_batch_response
from apex_metrics.dataverse.multipart_parts import (
    BatchPart,
    BatchRequestItem,
    BatchResponseItem,
    BatchResponsePart,
    ChangeSet,
    ChangeSetResponse,
    flatten_responses,
)

API_URL = "http://127.0.0.1:8765/api/data/v9.2/"
ENTITY_SET = "apex_campaignmetricses"
KEY = "apex_runid"


def row(n: int) -> dict[str, Any]:
    """An upsert body shaped like the sync's (``dataverse_body``): JSON-ready values."""
    return {
        KEY: f"run-{n:06d}",
        "apex_name": f"run-{n:06d}",
        "apex_campaignid": f"campaign-{n % 17}",
        "apex_phase": "2-3",
        "apex_agentstotal": 10,
        "apex_tokensin": 1000 + n,
        "apex_tokensout": 2000 + n,
        "apex_costusd": round(0.001 * n, 5),
        "apex_successrate": 90.5,
        "apex_createdat": "2026-01-01T00:00:00Z",
    }


def items(parts: int) -> list[tuple[str, dict[str, Any]]]:
    return [(f"run-{n:06d}", row(n)) for n in range(parts)]


def request_parts(parts: int) -> list[BatchPart]:
    body, content_type = encode_upserts(API_URL, ENTITY_SET, KEY, items(parts))
    decoded = decode_batch_request(body, content_type)
    return [p for p in decoded if isinstance(p, BatchPart)]


def in_changesets(flat: list[Any], size: int, wrap: Callable[[Any], Any]) -> list[Any]:
    """``flat`` cut into change sets of ``size``."""
    return [wrap(flat[i : i + size]) for i in range(0, len(flat), size)]


def answer(n: int, content_id: str | None = None) -> BatchResponseItem:
    """The emulator's answer to one upsert with ``Prefer: return=representation``."""
    location = f"{API_URL}{ENTITY_SET}(00000000-0000-0000-0000-{n:012d})"
    body = {
        "@odata.context": f"{API_URL}$metadata#{ENTITY_SET}/$entity",
        "@odata.etag": f'W/"{n + 1}"',
        KEY: f"run-{n:06d}",
    }
    headers = {
        "Content-Type": "application/json; odata.metadata=minimal",
        "OData-Version": "4.0",
        "Preference-Applied": "return=representation",
        "OData-EntityId": location,
        "ETag": f'W/"{n + 1}"',
    }
    return BatchResponseItem(201 if n % 2 else 200, headers, dumps(body), content_id)


def best(repeat: int, action: Callable[[], object]) -> float:
    """The least wall time of ``repeat`` runs, in seconds."""
    times = []
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--changeset-size", type=int, default=100)
    args = parser.parse_args()
    n, size = args.parts, args.changeset_size

    rows = items(n)
    plain_requests = request_parts(n)
    numbered = [
        BatchPart(p.method, p.url, p.headers, p.body, str(i)) for i, p in enumerate(plain_requests)
    ]
    cs_requests: list[BatchRequestItem] = in_changesets(numbered, size, ChangeSet)
    plain_answers: list[BatchResponsePart] = [answer(i) for i in range(n)]
    cs_answers: list[BatchResponsePart] = in_changesets(
        [answer(i, str(i)) for i in range(n)], size, ChangeSetResponse
    )
    requests: list[BatchRequestItem] = list(plain_requests)
    req_body, req_type = encode_batch_request(requests)
    cs_req_body, cs_req_type = encode_batch_request(cs_requests)
    resp_body, resp_type = encode_batch_response(plain_answers)
    cs_resp_body, cs_resp_type = encode_batch_response(cs_answers)
    response = httpx.Response(200, content=resp_body, headers={"Content-Type": resp_type})

    assert len(decode_batch_request(req_body, req_type)) == n
    changesets = decode_batch_request(cs_req_body, cs_req_type)
    assert sum(len(c.parts) for c in changesets if isinstance(c, ChangeSet)) == n
    assert len(flatten_responses(decode_batch_response(resp_body, resp_type))) == n
    assert len(flatten_responses(decode_batch_response(cs_resp_body, cs_resp_type))) == n
    assert [o.outcome for o in decode_upserts(response, KEY, rows)][:2] == ["updated", "created"]

    cs = "(change sets)"
    cases: list[tuple[str, Callable[[], object]]] = [
        ("client  encode_upserts", lambda: encode_upserts(API_URL, ENTITY_SET, KEY, rows)),
        ("client  decode_upserts", lambda: decode_upserts(response, KEY, rows)),
        ("encode_batch_request", lambda: encode_batch_request(requests)),
        (f"encode_batch_request   {cs}", lambda: encode_batch_request(cs_requests)),
        ("decode_batch_request", lambda: decode_batch_request(req_body, req_type)),
        (f"decode_batch_request   {cs}", lambda: decode_batch_request(cs_req_body, cs_req_type)),
        ("encode_batch_response", lambda: encode_batch_response(plain_answers)),
        (f"encode_batch_response  {cs}", lambda: encode_batch_response(cs_answers)),
        ("decode_batch_response", lambda: decode_batch_response(resp_body, resp_type)),
        (f"decode_batch_response  {cs}", lambda: decode_batch_response(cs_resp_body, cs_resp_type)),
    ]
    print(
        f"{n} parts per batch, change sets of {size}, best of {args.repeat}; "
        f"request {len(req_body):,} B, response {len(resp_body):,} B"
    )
    print(f"{'operation':40} {'ms/batch':>9} {'µs/part':>9}")
    for name, action in cases:
        seconds = best(args.repeat, action)
        print(f"{name:40} {seconds * 1e3:9.2f} {seconds * 1e6 / n:9.2f}")


if __name__ == "__main__":
    main()
