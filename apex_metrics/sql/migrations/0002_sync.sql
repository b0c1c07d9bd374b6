-- 0002_sync: sync engine bookkeeping (leases, attempts, dead letters) and run history.
--
-- The bookkeeping lives on the row. None of these columns is a data column, so writing them
-- never bumps `version` (the foundation trigger compares only the 13 data columns).
--
--   pending    exported_version < version
--   in flight  sync_lease_until >= now()            (a claim by sync_lease_owner)
--   dead       sync_dead_version = version          (a change of the data gives it a new chance)
--   retrying   sync_next_attempt_at > now()
--
-- sync_attempts counts deliveries of sync_attempt_version; a new version starts again at 1.

ALTER TABLE campaign_metrics
    ADD COLUMN sync_lease_owner text,
    ADD COLUMN sync_lease_until timestamptz,
    ADD COLUMN sync_attempts integer NOT NULL DEFAULT 0,
    ADD COLUMN sync_attempt_version bigint NOT NULL DEFAULT 0,
    ADD COLUMN sync_next_attempt_at timestamptz,
    ADD COLUMN sync_dead_version bigint NOT NULL DEFAULT 0,
    ADD COLUMN sync_last_error_code text,
    ADD COLUMN sync_last_error text,
    ADD COLUMN sync_last_error_at timestamptz;

-- The claim scans idx_campaign_metrics_pending (0001): pending rows in id order.

-- Room in every page for the claim's lease update to be HOT (no index entries rewritten).
ALTER TABLE campaign_metrics SET (fillfactor = 70);

-- Recent errors for `sync status` (only rows that ever failed are indexed).
CREATE INDEX idx_campaign_metrics_sync_errors
    ON campaign_metrics (sync_last_error_at DESC)
    WHERE sync_last_error_at IS NOT NULL;

-- One row per claimed batch: the "flow run history" read by `sync status`, the panel and verify.
CREATE TABLE sync_runs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    worker text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    ended_at timestamptz,
    claimed integer NOT NULL DEFAULT 0,
    created integer NOT NULL DEFAULT 0,
    updated integer NOT NULL DEFAULT 0,
    failed integer NOT NULL DEFAULT 0,
    dead_lettered integer NOT NULL DEFAULT 0,
    requeued integer NOT NULL DEFAULT 0,
    throttled integer NOT NULL DEFAULT 0,
    error text
);

CREATE INDEX idx_sync_runs_started_at ON sync_runs (started_at);

-- Live engine processes: each refreshes heartbeat_at every poll interval and deletes its row on
-- a clean stop (verify's "sync engine is alive" gate reads it).
CREATE TABLE sync_processes (
    id text PRIMARY KEY,
    hostname text NOT NULL,
    pid integer NOT NULL,
    workers integer NOT NULL,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    heartbeat_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
