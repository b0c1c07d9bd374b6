"""The sync engine: exactly-once in effect, sub-second export of campaign_metrics to Dataverse.

queue.py     claim / settle / release in PostgreSQL (SKIP LOCKED, leases, fenced acks)
worker.py    one worker's loop: drain batches, then wait for NOTIFY, a poll or stop
engine.py    N workers + the listener + one pacer in one process
listener.py  LISTEN on a dedicated autocommit connection that reconnects
slots.py     the Dataverse budget (pacer slots, the pause after a 429) shared in PostgreSQL
sink.py      what the engine needs from Dataverse (``upsert``: UpsertMultiple or $batch), the
             row → body map
status.py    the sync health figures (one reader of v_sync_health), ``sync status``, ``retry-dead``,
             ``replay``
reconcile.py ``reconcile``: compare every key and value with Dataverse, re-queue differences
metrics.py   Prometheus metrics; logs.py: text or JSON logs
"""
