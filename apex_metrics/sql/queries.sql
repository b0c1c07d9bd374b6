-- Foundation queries: migrations bookkeeping, schema check, recording runs.
-- Parameters use psycopg's %(name)s style. Column lists follow apex_metrics.metric.FIELD_NAMES.

-- name: create_migrations_table
-- Bookkeeping of `apex-metrics db migrate`: one row per applied migration file.
CREATE TABLE IF NOT EXISTS apex_metrics_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: applied_migrations
SELECT version, name, checksum FROM apex_metrics_migrations ORDER BY version;

-- name: record_migration
INSERT INTO apex_metrics_migrations (version, name, checksum)
VALUES (%(version)s, %(name)s, %(checksum)s);

-- name: migrate_lock
-- One migrator per database at a time (the key spells "apexmigr").
SELECT pg_advisory_lock(7020383460346374514);

-- name: migrate_unlock
SELECT pg_advisory_unlock(7020383460346374514);

-- name: database_exists
-- Whether a database of that name exists (the demo creates its own).
SELECT 1 FROM pg_database WHERE datname = %(name)s;

-- name: create_database
-- The braces take the database name, quoted by psycopg.sql.Identifier.
CREATE DATABASE {};

-- name: schema_version
-- The highest applied migration; fails with undefined_table on a database never migrated.
SELECT coalesce(max(version), 0) FROM apex_metrics_migrations;

-- name: upsert_metric
-- Insert a run, or update it by run_id; either way it is pending again (version bumped even
-- when every value is unchanged). Returns the row id, its version and whether it was new.
INSERT INTO campaign_metrics (
    campaign_id, run_id, phase, agents_total, agents_successful, assets_generated, tokens_in,
    tokens_out, cost_usd, latency_p95_ms, latency_avg_ms, success_rate, created_at
) VALUES (
    %(campaign_id)s, %(run_id)s, %(phase)s, %(agents_total)s, %(agents_successful)s,
    %(assets_generated)s, %(tokens_in)s, %(tokens_out)s, %(cost_usd)s, %(latency_p95_ms)s,
    %(latency_avg_ms)s, %(success_rate)s, %(created_at)s
)
ON CONFLICT (run_id) DO UPDATE SET
    campaign_id = EXCLUDED.campaign_id,
    phase = EXCLUDED.phase,
    agents_total = EXCLUDED.agents_total,
    agents_successful = EXCLUDED.agents_successful,
    assets_generated = EXCLUDED.assets_generated,
    tokens_in = EXCLUDED.tokens_in,
    tokens_out = EXCLUDED.tokens_out,
    cost_usd = EXCLUDED.cost_usd,
    latency_p95_ms = EXCLUDED.latency_p95_ms,
    latency_avg_ms = EXCLUDED.latency_avg_ms,
    success_rate = EXCLUDED.success_rate,
    created_at = EXCLUDED.created_at,
    version = campaign_metrics.version + 1
RETURNING id, version, (xmax = 0) AS inserted;

-- name: insert_metric
-- record(): insert a new run; no row back when its run_id is recorded already (the recorder
-- then runs upsert_metric). Only the insert triggers fire: an INSERT … ON CONFLICT DO UPDATE
-- fires the update triggers too, for every statement, even when it updates nothing.
INSERT INTO campaign_metrics (
    campaign_id, run_id, phase, agents_total, agents_successful, assets_generated, tokens_in,
    tokens_out, cost_usd, latency_p95_ms, latency_avg_ms, success_rate, created_at
) VALUES (
    %(campaign_id)s, %(run_id)s, %(phase)s, %(agents_total)s, %(agents_successful)s,
    %(assets_generated)s, %(tokens_in)s, %(tokens_out)s, %(cost_usd)s, %(latency_p95_ms)s,
    %(latency_avg_ms)s, %(success_rate)s, %(created_at)s
)
ON CONFLICT (run_id) DO NOTHING
RETURNING id, version;

-- name: create_stage
-- A session-local staging table with the 13 data columns and their exact types.
CREATE TEMP TABLE IF NOT EXISTS apex_metrics_stage ON COMMIT DELETE ROWS AS
SELECT campaign_id, run_id, phase, agents_total, agents_successful, assets_generated, tokens_in,
       tokens_out, cost_usd, latency_p95_ms, latency_avg_ms, success_rate, created_at
FROM campaign_metrics WITH NO DATA;

-- name: copy_stage
COPY apex_metrics_stage (
    campaign_id, run_id, phase, agents_total, agents_successful, assets_generated, tokens_in,
    tokens_out, cost_usd, latency_p95_ms, latency_avg_ms, success_rate, created_at
) FROM STDIN;

-- name: copy_metrics
-- Runs known to be new go straight into the table (the stage is only for upserts).
COPY campaign_metrics (
    campaign_id, run_id, phase, agents_total, agents_successful, assets_generated, tokens_in,
    tokens_out, cost_usd, latency_p95_ms, latency_avg_ms, success_rate, created_at
) FROM STDIN;

-- name: any_run_exists
-- Whether any of %(run_ids)s is already recorded (then a bulk write must upsert).
SELECT EXISTS (SELECT 1 FROM campaign_metrics WHERE run_id = ANY (%(run_ids)s::varchar[]));

-- name: upsert_from_stage
-- Upsert every staged row (run ids are unique within the stage), as upsert_metric does, in
-- run_id order: two bulk writes with overlapping run ids lock them in the same order, so they
-- wait for each other instead of deadlocking.
WITH written AS (
    INSERT INTO campaign_metrics AS m (
        campaign_id, run_id, phase, agents_total, agents_successful, assets_generated, tokens_in,
        tokens_out, cost_usd, latency_p95_ms, latency_avg_ms, success_rate, created_at
    )
    SELECT campaign_id, run_id, phase, agents_total, agents_successful, assets_generated,
           tokens_in, tokens_out, cost_usd, latency_p95_ms, latency_avg_ms, success_rate,
           created_at
    FROM apex_metrics_stage
    ORDER BY run_id
    ON CONFLICT (run_id) DO UPDATE SET
        campaign_id = EXCLUDED.campaign_id,
        phase = EXCLUDED.phase,
        agents_total = EXCLUDED.agents_total,
        agents_successful = EXCLUDED.agents_successful,
        assets_generated = EXCLUDED.assets_generated,
        tokens_in = EXCLUDED.tokens_in,
        tokens_out = EXCLUDED.tokens_out,
        cost_usd = EXCLUDED.cost_usd,
        latency_p95_ms = EXCLUDED.latency_p95_ms,
        latency_avg_ms = EXCLUDED.latency_avg_ms,
        success_rate = EXCLUDED.success_rate,
        created_at = EXCLUDED.created_at,
        version = m.version + 1
    RETURNING (xmax = 0) AS inserted
)
SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM written;
