-- Named queries of the sync engine (apex_metrics.sync). Placeholders are %(name)s.
-- Every statement here is short: a claim commits before the HTTP call, and the ack runs in
-- its own transaction after it, so no transaction is ever open across a Dataverse request.

-- name: claim_batch
-- Lease up to %(limit)s pending rows that are not dead, not leased (or whose lease expired) and
-- due for an attempt. The candidates are locked (SKIP LOCKED: rows another claim holds are
-- passed over), not rewritten: the lease is a row of sync_leases. Its upsert takes only rows
-- whose lease is still free when it runs (a claim that committed after this statement began is
-- seen there), so a row is never leased twice. Returns the values of the locked rows, the
-- version they belong to and the attempt this is. created_at comes as Dataverse text (UTC,
-- whole seconds), so that no stored value (e.g. a year past 9999, which Python cannot load)
-- can make the claim itself fail and block the queue.
WITH candidates AS (
    SELECT c.id, c.version,
        c.campaign_id, c.run_id, c.phase, c.agents_total, c.agents_successful,
        c.assets_generated, c.tokens_in, c.tokens_out, c.cost_usd, c.latency_p95_ms,
        c.latency_avg_ms, c.success_rate,
        to_char(c.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS created_at
    FROM campaign_metrics AS c
    WHERE c.exported_version < c.version
      AND c.sync_dead_version <> c.version
      AND (c.sync_next_attempt_at IS NULL OR c.sync_next_attempt_at <= clock_timestamp())
      AND NOT EXISTS (
          SELECT FROM sync_leases AS l
          WHERE l.id = c.id AND l.lease_until >= clock_timestamp()
      )
    ORDER BY c.id
    LIMIT %(limit)s
    FOR UPDATE OF c SKIP LOCKED
), leased AS (
    INSERT INTO sync_leases AS l (id, lease_owner, lease_until, attempts, attempt_version)
    SELECT id, %(owner)s, clock_timestamp() + make_interval(secs => %(lease_seconds)s), 1, version
    FROM candidates
    ON CONFLICT (id) DO UPDATE
    SET lease_owner = excluded.lease_owner,
        lease_until = excluded.lease_until,
        attempts = CASE WHEN l.attempt_version = excluded.attempt_version
                        THEN l.attempts + 1 ELSE 1 END,
        attempt_version = excluded.attempt_version
    WHERE l.lease_until IS NULL OR l.lease_until < clock_timestamp()
    RETURNING l.id, l.attempts
)
SELECT c.*, leased.attempts
FROM candidates AS c
JOIN leased USING (id);

-- name: start_run
-- Open a run record for a claimed batch (same transaction as the claim).
INSERT INTO sync_runs (worker, claimed) VALUES (%(worker)s, %(claimed)s) RETURNING id;

-- Locks: every statement here that writes both tables locks a campaign_metrics row before its
-- lease, as the claim does (its upsert takes the rows the claim has locked), so that a claim
-- and a settling worker never wait for each other in a cycle.

-- name: ack_delivered
-- Fenced acknowledgement, first half: every delivered row still leased by this claim. Where
-- it still has the version that was sent, that version is now exported; a row changed in
-- flight stays pending (its latest values go out next), and is locked here all the same, so
-- that end_leases only ends leases of rows this transaction holds. Returns one row per id
-- with `current` = false for rows changed in flight.
WITH d AS (
    SELECT * FROM unnest(%(ids)s::bigint[], %(versions)s::bigint[]) AS d(id, version)
)
UPDATE campaign_metrics AS c
SET exported_version = CASE WHEN c.version = d.version THEN d.version
                            ELSE c.exported_version END,
    exported_at = CASE WHEN c.version = d.version THEN clock_timestamp()
                       ELSE c.exported_at END,
    sync_next_attempt_at = NULL,
    sync_last_error_code = NULL,
    sync_last_error = NULL,
    sync_last_error_at = NULL
FROM d
WHERE c.id = ANY(%(ids)s::bigint[])  -- drives the primary key index, not a scan of the table
  AND c.id = d.id
  AND EXISTS (SELECT FROM sync_leases AS l WHERE l.id = c.id AND l.lease_owner = %(owner)s)
RETURNING c.id, (c.version = d.version) AS current;

-- name: end_leases
-- Fenced acknowledgement, second half: the claim's leases of the delivered rows end (and with
-- them their attempt counts). They are the rows ack_delivered returned: their rows are locked
-- by this transaction, so no claim can have taken a lease over in between.
DELETE FROM sync_leases
WHERE id = ANY(%(ids)s::bigint[]) AND lease_owner = %(owner)s;

-- name: record_failures
-- Fenced failure bookkeeping for rows of this claim: keep the error, then either dead-letter
-- the row (for the version that failed) or schedule its next attempt, and release the lease.
-- `counted` = false gives the attempt back (429: the service was busy, not the row bad).
-- A row changed in flight is never dead-lettered for its old values and is retried at once.
WITH f AS (
    SELECT *
    FROM unnest(%(ids)s::bigint[], %(versions)s::bigint[], %(dead)s::boolean[],
                %(delays)s::float8[], %(counted)s::boolean[], %(codes)s::text[],
                %(messages)s::text[])
        AS f(id, version, dead, delay, counted, code, message)
), failed AS (
    UPDATE campaign_metrics AS c
    SET sync_dead_version = CASE WHEN f.dead AND c.version = f.version THEN f.version
                                 ELSE c.sync_dead_version END,
        sync_next_attempt_at = CASE WHEN c.version <> f.version OR f.dead THEN NULL
                                    ELSE clock_timestamp() + make_interval(secs => f.delay) END,
        sync_last_error_code = f.code,
        sync_last_error = f.message,
        sync_last_error_at = clock_timestamp()
    FROM f
    WHERE c.id = ANY(%(ids)s::bigint[])
      AND c.id = f.id
      AND EXISTS (SELECT FROM sync_leases AS l WHERE l.id = c.id AND l.lease_owner = %(owner)s)
    RETURNING c.id, f.counted, (f.dead AND c.version = f.version) AS dead
)
UPDATE sync_leases AS l  -- rows whose campaign_metrics row is locked above: row, then lease
SET lease_owner = NULL,
    lease_until = NULL,
    attempts = CASE WHEN failed.counted THEN l.attempts ELSE greatest(l.attempts - 1, 0) END
FROM failed
WHERE l.id = failed.id AND l.lease_owner = %(owner)s
RETURNING l.id, failed.dead;

-- name: delay_claim
-- Before release_claim with a delay: the claim's rows wait that long for their next attempt.
UPDATE campaign_metrics AS c
SET sync_next_attempt_at = clock_timestamp() + make_interval(secs => %(delay)s::float8)
WHERE c.id IN (SELECT id FROM sync_leases WHERE lease_owner = %(owner)s);

-- name: release_claim
-- Give back every row still leased by one claim, without counting the attempt (shutdown,
-- a database error before the send, a batch-level failure that is not the rows' fault).
UPDATE sync_leases
SET lease_owner = NULL,
    lease_until = NULL,
    attempts = greatest(attempts - 1, 0)
WHERE lease_owner = %(owner)s;

-- name: release_owner_prefix
-- Give back every lease of one worker process (owner tokens are '<process>:<worker>:<n>').
UPDATE sync_leases
SET lease_owner = NULL,
    lease_until = NULL,
    attempts = greatest(attempts - 1, 0)
WHERE lease_owner LIKE %(prefix)s || '%%';

-- name: finish_run
-- Close the run record of a batch (same transaction as the ack).
UPDATE sync_runs
SET ended_at = clock_timestamp(),
    created = %(created)s,
    updated = %(updated)s,
    upserted = %(upserted)s,
    failed = %(failed)s,
    dead_lettered = %(dead_lettered)s,
    requeued = %(requeued)s,
    throttled = %(throttled)s,
    error = %(error)s
WHERE id = %(run_id)s AND ended_at IS NULL;  -- a run is closed once

-- name: next_due
-- Seconds until the earliest retryable row is due (NULL when nothing is waiting); rows leased
-- by live claims are left to their owners. Used by `sync --once` to wait for retries.
SELECT extract(epoch FROM min(coalesce(c.sync_next_attempt_at, clock_timestamp()))
                     - clock_timestamp())::float8 AS seconds
FROM campaign_metrics AS c
WHERE c.exported_version < c.version
  AND c.sync_dead_version <> c.version
  AND NOT EXISTS (
      SELECT FROM sync_leases AS l WHERE l.id = c.id AND l.lease_until >= clock_timestamp()
  );

-- name: prune_runs
-- Retention of the run history.
DELETE FROM sync_runs WHERE started_at < now() - make_interval(days => %(days)s);

-- name: prune_processes
-- Processes that stopped without saying goodbye (killed) a day ago or more.
DELETE FROM sync_processes WHERE heartbeat_at < clock_timestamp() - interval '1 day';

-- name: heartbeat
-- This process is alive (insert on the first beat).
INSERT INTO sync_processes (id, hostname, pid, workers)
VALUES (%(id)s, %(hostname)s, %(pid)s, %(workers)s)
ON CONFLICT (id) DO UPDATE SET heartbeat_at = clock_timestamp();

-- name: goodbye
-- This process stops cleanly.
DELETE FROM sync_processes WHERE id = %(id)s;

-- name: sync_health
-- The sync health figures: pending, in flight, dead, retrying and lag, as v_sync_health
-- (0011_sync_health) defines them. Read through apex_metrics.sync.status.read_health only.
SELECT pending, in_flight, dead, retrying, lag_seconds FROM v_sync_health;

-- name: sync_health_installed
-- Whether this database has the sync health view and the run history (`db migrate` adds them).
SELECT to_regclass('v_sync_health') IS NOT NULL AND to_regclass('sync_runs') IS NOT NULL;

-- name: throughput
-- Rows delivered in the last %(seconds)s seconds according to the run history.
SELECT coalesce(sum(created + updated + upserted), 0)::bigint AS delivered,
       count(*)::bigint AS runs,
       coalesce(sum(failed), 0)::bigint AS failed
FROM sync_runs
WHERE ended_at >= clock_timestamp() - make_interval(secs => %(seconds)s);

-- name: last_errors
-- The most recent delivery errors, dead or still retrying.
SELECT c.run_id, c.sync_last_error_code AS code, c.sync_last_error AS message,
       c.sync_last_error_at AS at, coalesce(l.attempts, 0) AS attempts,
       (c.sync_dead_version = c.version) AS dead
FROM campaign_metrics AS c
LEFT JOIN sync_leases AS l ON l.id = c.id
WHERE c.sync_last_error_at IS NOT NULL
ORDER BY c.sync_last_error_at DESC
LIMIT %(limit)s;

-- name: last_runs
-- The newest sync runs, newest first (the run history of `sync status` and the panel).
SELECT id, worker, started_at, ended_at, claimed, created, updated, upserted, failed, dead_lettered,
       requeued, throttled, error
FROM sync_runs
ORDER BY id DESC
LIMIT %(limit)s;

-- name: retry_dead_all
-- Re-queue every dead row with fresh attempts.
WITH requeued AS (
    UPDATE campaign_metrics
    SET sync_dead_version = 0, sync_next_attempt_at = NULL
    WHERE sync_dead_version = version AND exported_version < version
    RETURNING id, run_id
), fresh AS (
    UPDATE sync_leases AS l SET attempts = 0 FROM requeued WHERE l.id = requeued.id
)
SELECT run_id FROM requeued;

-- name: retry_dead_runs
-- Re-queue the dead rows among the given run ids.
WITH requeued AS (
    UPDATE campaign_metrics
    SET sync_dead_version = 0, sync_next_attempt_at = NULL
    WHERE run_id = ANY(%(run_ids)s::text[])
      AND sync_dead_version = version AND exported_version < version
    RETURNING id, run_id
), fresh AS (
    UPDATE sync_leases AS l SET attempts = 0 FROM requeued WHERE l.id = requeued.id
)
SELECT run_id FROM requeued;

-- name: dead_run_ids
-- Which of the given run ids exist, and which of them are dead (for a precise report).
SELECT run_id, (sync_dead_version = version AND exported_version < version) AS dead
FROM campaign_metrics
WHERE run_id = ANY(%(run_ids)s::text[]);

-- name: replay_since
-- Send again every row changed at or after %(since)s: mark it pending, clear dead and attempts
-- (a lease in hand stays: its worker's acknowledgement is fenced by the version it sent).
WITH replayed AS (
    UPDATE campaign_metrics
    SET exported_version = 0, sync_dead_version = 0, sync_next_attempt_at = NULL
    WHERE updated_at >= %(since)s
    RETURNING id
), fresh AS (
    UPDATE sync_leases AS l SET attempts = 0 FROM replayed WHERE l.id = replayed.id
)
SELECT id FROM replayed;

-- name: requeue_ids
-- Mark rows pending again (reconcile --repair), clearing dead and attempts.
WITH requeued AS (
    UPDATE campaign_metrics
    SET exported_version = 0, sync_dead_version = 0, sync_next_attempt_at = NULL
    WHERE id = ANY(%(ids)s::bigint[])
    RETURNING id
), fresh AS (
    UPDATE sync_leases AS l SET attempts = 0 FROM requeued WHERE l.id = requeued.id
)
SELECT id FROM requeued;

-- name: notify_pending
-- Wake the workers after a re-queue (bookkeeping updates do not fire the NOTIFY trigger).
SELECT pg_notify('apex_metrics_pending', '{"more": true}');

-- name: reconcile_create_remote
-- Session-local copy of what Dataverse holds, filled by COPY page by page.
CREATE TEMP TABLE IF NOT EXISTS apex_metrics_reconcile_remote (
    run_id text NOT NULL,
    campaign_id text, phase text, agents_total bigint, agents_successful bigint,
    assets_generated bigint, tokens_in bigint, tokens_out bigint, cost_usd numeric,
    latency_p95_ms bigint, latency_avg_ms bigint, success_rate numeric, created_at timestamptz,
    copies integer NOT NULL DEFAULT 1
);

-- name: reconcile_copy_remote
COPY apex_metrics_reconcile_remote (run_id, campaign_id, phase, agents_total, agents_successful,
    assets_generated, tokens_in, tokens_out, cost_usd, latency_p95_ms, latency_avg_ms,
    success_rate, created_at) FROM STDIN;

-- name: reconcile_index_remote
CREATE INDEX IF NOT EXISTS apex_metrics_reconcile_remote_run_id
    ON apex_metrics_reconcile_remote (run_id);

-- name: reconcile_compare
-- Both sides, joined by key and streamed in key order (read with a server-side cursor).
-- `l_*` is PostgreSQL, `r_*` is Dataverse; a missing side has a NULL key. Values are
-- compared as Dataverse keeps them (whole-second UTC timestamps, numerics by value).
SELECT l.id,
       coalesce(l.run_id, r.run_id) AS run_id,
       (l.run_id IS NOT NULL) AS in_pg,
       (r.run_id IS NOT NULL) AS in_dataverse,
       (l.exported_version < l.version) AS pending,
       coalesce(r.copies, 0) AS copies,
       array_remove(ARRAY[
           CASE WHEN l.campaign_id IS DISTINCT FROM r.campaign_id THEN 'campaign_id' END,
           CASE WHEN l.phase IS DISTINCT FROM r.phase THEN 'phase' END,
           CASE WHEN l.agents_total IS DISTINCT FROM r.agents_total THEN 'agents_total' END,
           CASE WHEN l.agents_successful IS DISTINCT FROM r.agents_successful
                THEN 'agents_successful' END,
           CASE WHEN l.assets_generated IS DISTINCT FROM r.assets_generated
                THEN 'assets_generated' END,
           CASE WHEN l.tokens_in IS DISTINCT FROM r.tokens_in THEN 'tokens_in' END,
           CASE WHEN l.tokens_out IS DISTINCT FROM r.tokens_out THEN 'tokens_out' END,
           CASE WHEN l.cost_usd IS DISTINCT FROM r.cost_usd THEN 'cost_usd' END,
           CASE WHEN l.latency_p95_ms IS DISTINCT FROM r.latency_p95_ms
                THEN 'latency_p95_ms' END,
           CASE WHEN l.latency_avg_ms IS DISTINCT FROM r.latency_avg_ms
                THEN 'latency_avg_ms' END,
           CASE WHEN l.success_rate IS DISTINCT FROM r.success_rate THEN 'success_rate' END,
           CASE WHEN date_trunc('second', l.created_at) IS DISTINCT FROM r.created_at
                THEN 'created_at' END
       ], NULL) AS different
FROM campaign_metrics AS l
FULL OUTER JOIN (
    SELECT run_id, min(campaign_id) AS campaign_id, min(phase) AS phase,
           min(agents_total) AS agents_total, min(agents_successful) AS agents_successful,
           min(assets_generated) AS assets_generated, min(tokens_in) AS tokens_in,
           min(tokens_out) AS tokens_out, min(cost_usd) AS cost_usd,
           min(latency_p95_ms) AS latency_p95_ms, min(latency_avg_ms) AS latency_avg_ms,
           min(success_rate) AS success_rate, min(created_at) AS created_at,
           count(*)::integer AS copies
    FROM apex_metrics_reconcile_remote
    GROUP BY run_id
) AS r ON r.run_id = l.run_id
ORDER BY coalesce(l.run_id, r.run_id);

-- name: reconcile_extra_keys
-- Keys Dataverse holds and PostgreSQL does not (reconcile --delete-extra), in key order, one
-- page after %(after)s (keyset paging: each page is read and committed before any HTTP call).
SELECT DISTINCT r.run_id
FROM apex_metrics_reconcile_remote AS r
WHERE r.run_id > %(after)s
  AND NOT EXISTS (SELECT 1 FROM campaign_metrics AS l WHERE l.run_id = r.run_id)
ORDER BY r.run_id
LIMIT %(limit)s;

-- name: ensure_slots
-- Slots 0 … size-1 exist (x-ms-dop-hint may grow).
INSERT INTO sync_slots (slot)
SELECT generate_series(0, %(size)s - 1)
ON CONFLICT (slot) DO NOTHING;

-- name: take_slot
-- One free slot among the first %(size)s (not held, or held by a process that died; not
-- resting), unless a pause is in force; plus the pause left and when the next resting slot
-- is free, for a taker that got none.
WITH pacing AS (
    SELECT greatest(extract(epoch FROM paused_until - clock_timestamp()), 0)::float8 AS paused
    FROM sync_pacing
), free AS (
    SELECT s.slot
    FROM sync_slots AS s, pacing AS p
    WHERE p.paused = 0
      AND s.slot < %(size)s
      AND s.free_at <= clock_timestamp()
      AND (s.owner IS NULL OR s.held_until < clock_timestamp())
    ORDER BY s.free_at, s.slot
    LIMIT 1
    FOR UPDATE OF s SKIP LOCKED
), taken AS (
    UPDATE sync_slots AS s
    SET owner = %(owner)s,
        held_until = clock_timestamp() + make_interval(secs => %(hold)s)
    FROM free
    WHERE s.slot = free.slot
    RETURNING s.slot
)
SELECT (SELECT slot FROM taken) AS slot,
       (SELECT paused FROM pacing) AS paused,
       (SELECT extract(epoch FROM min(free_at) - clock_timestamp())::float8
        FROM sync_slots
        WHERE slot < %(size)s AND free_at > clock_timestamp()
          AND (owner IS NULL OR held_until < clock_timestamp())) AS next_free;

-- name: give_back_slot
-- The holder frees its slot; nobody may take it for %(rest)s seconds.
UPDATE sync_slots
SET owner = NULL,
    held_until = NULL,
    free_at = clock_timestamp() + make_interval(secs => %(rest)s)
WHERE slot = %(slot)s AND owner = %(owner)s;

-- name: give_back_owner_slots
-- A process that stops frees every slot it still holds.
UPDATE sync_slots SET owner = NULL, held_until = NULL WHERE owner = %(owner)s;

-- name: pause_all
-- A 429: no process takes a slot for %(seconds)s seconds (a longer pause in force stays).
UPDATE sync_pacing
SET paused_until = greatest(paused_until, clock_timestamp() + make_interval(secs => %(seconds)s));
