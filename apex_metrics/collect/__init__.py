"""``apex-metrics collect``: an OTLP/HTTP trace receiver that turns each trace into one run.

    wire.py      content types, gzip, body limits; protobuf and JSON in and out
    spans.py     what one span says about its run (extracted and validated: pure)
    pricing.py   cost of a model call from genai-prices, unknown models counted
    runs.py      one trace's aggregate and the run it makes (pure)
    store.py     the traces held in memory: dedupe, caps, idle finalisation
    writer.py    upserts changed runs in batches (one transaction each)
    app.py       the Starlette app: POST /v1/traces, GET /metrics, its lifespan
    serve.py     uvicorn, and the refusal to bind off loopback without a token

The mapping rules and limits are the contract in ``docs/ingest.md``. Needs the ``collect``
extra (``opentelemetry-proto``, ``genai-prices``).
"""
