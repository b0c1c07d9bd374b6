-- MetricsPanel: an hourly rollup of campaign_metrics, kept up to date incrementally by
-- statement-level triggers, so that every window reads a few hundred thousand rows at most.
--
-- apex_metrics_panel_rollup      (hour, campaign_id, phase) -> sums (never averages)
-- apex_metrics_panel_rollup_daily (day, campaign_id, phase) -> the same sums per UTC day
-- apex_metrics_panel_latency_hist (hour, phase, bucket) -> runs: a histogram of latency_p95_ms in
--                                 log-linear buckets (exact below 64 ms, 32 sub-buckets per
--                                 power of two above: each bucket spans at most 1/32 of its value)
-- apex_metrics_panel_latency_hist_daily (day, phase, bucket) -> runs: the same per UTC day
-- apex_metrics_panel_change_seq  bumped by every statement that changes what the panel shows
-- NOTIFY apex_metrics_panel      sent (at commit) by the same statements

CREATE TABLE IF NOT EXISTS apex_metrics_panel_rollup (
    hour timestamptz NOT NULL,
    campaign_id varchar(64) NOT NULL,
    phase varchar(16),
    runs bigint NOT NULL DEFAULT 0,
    cost_usd numeric NOT NULL DEFAULT 0,
    tokens_in bigint NOT NULL DEFAULT 0,
    tokens_out bigint NOT NULL DEFAULT 0,
    agents_total bigint NOT NULL DEFAULT 0,
    agents_successful bigint NOT NULL DEFAULT 0,
    assets_generated bigint NOT NULL DEFAULT 0,
    latency_avg_sum bigint NOT NULL DEFAULT 0,
    latency_avg_runs bigint NOT NULL DEFAULT 0,
    latency_p95_runs bigint NOT NULL DEFAULT 0,
    CONSTRAINT apex_metrics_panel_rollup_key UNIQUE NULLS NOT DISTINCT (hour, campaign_id, phase)
);

CREATE TABLE IF NOT EXISTS apex_metrics_panel_rollup_daily (
    day timestamptz NOT NULL,
    campaign_id varchar(64) NOT NULL,
    phase varchar(16),
    runs bigint NOT NULL DEFAULT 0,
    cost_usd numeric NOT NULL DEFAULT 0,
    tokens_in bigint NOT NULL DEFAULT 0,
    tokens_out bigint NOT NULL DEFAULT 0,
    agents_total bigint NOT NULL DEFAULT 0,
    agents_successful bigint NOT NULL DEFAULT 0,
    assets_generated bigint NOT NULL DEFAULT 0,
    latency_avg_sum bigint NOT NULL DEFAULT 0,
    latency_avg_runs bigint NOT NULL DEFAULT 0,
    latency_p95_runs bigint NOT NULL DEFAULT 0,
    CONSTRAINT apex_metrics_panel_rollup_daily_key
        UNIQUE NULLS NOT DISTINCT (day, campaign_id, phase)
);

CREATE TABLE IF NOT EXISTS apex_metrics_panel_latency_hist_daily (
    day timestamptz NOT NULL,
    phase varchar(16),
    bucket smallint NOT NULL,
    runs bigint NOT NULL DEFAULT 0,
    CONSTRAINT apex_metrics_panel_latency_hist_daily_key
        UNIQUE NULLS NOT DISTINCT (day, phase, bucket)
);

CREATE TABLE IF NOT EXISTS apex_metrics_panel_latency_hist (
    hour timestamptz NOT NULL,
    phase varchar(16),
    bucket smallint NOT NULL,
    runs bigint NOT NULL DEFAULT 0,
    CONSTRAINT apex_metrics_panel_latency_hist_key
        UNIQUE NULLS NOT DISTINCT (hour, phase, bucket)
);

CREATE SEQUENCE IF NOT EXISTS apex_metrics_panel_change_seq;

-- Campaign-filtered p95s read raw rows: covering, so that they are index-only scans.
CREATE INDEX IF NOT EXISTS apex_metrics_panel_campaign_created
    ON campaign_metrics (campaign_id, created_at) INCLUDE (phase, latency_p95_ms);

-- The bucket of a latency: v itself below 64, else 64 + 32 per power of two + 5 mantissa bits.
-- e = floor(log2(v)) = 32 - position of the first 1 bit. One expression, not STRICT: the planner
-- inlines it (7x faster than a function call per row); NULL in gives NULL out.
CREATE OR REPLACE FUNCTION apex_metrics_latency_bucket(v integer) RETURNS smallint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (CASE WHEN v < 64 THEN v
        ELSE 64 + (26 - position('1' IN v::bit(32)::text)) * 32
             + ((v >> (27 - position('1' IN v::bit(32)::text))) - 32) END)::smallint
$$;

-- The largest latency that falls in a bucket (what the panel reports for a percentile).
CREATE OR REPLACE FUNCTION apex_metrics_latency_bucket_upper(b integer) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN b < 64 THEN b
        ELSE (((32 + (b - 64) % 32 + 1)::bigint << (6 + (b - 64) / 32 - 5)) - 1)::integer END
$$;

-- The three functions below apply signed deltas (+1 new versions, -1 old ones) to the rollups
-- and histograms, keys in a fixed order so that concurrent writers lock rollup rows in the
-- same order. Static SQL, so that PL/pgSQL keeps the plans. Updates that leave every column
-- the panel reads unchanged (sync bookkeeping) contribute nothing and wake nobody.

-- Rows inserted by one statement.
CREATE OR REPLACE FUNCTION apex_metrics_panel_rollup_inserted() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    changed bigint;
BEGIN
    WITH delta AS MATERIALIZED (
        SELECT 1 AS sign, created_at, campaign_id, phase, cost_usd, tokens_in, tokens_out, agents_total,
               agents_successful, assets_generated, latency_avg_ms, latency_p95_ms
        FROM new_rows
    ),
    rolled AS (
        INSERT INTO apex_metrics_panel_rollup AS r (
            hour, campaign_id, phase, runs, cost_usd, tokens_in, tokens_out, agents_total,
            agents_successful, assets_generated, latency_avg_sum, latency_avg_runs,
            latency_p95_runs
        )
        SELECT date_bin('1 hour', created_at, timestamptz '2000-01-01 00:00:00+00'),
               campaign_id, phase, sum(sign), coalesce(sum(sign * cost_usd), 0),
               coalesce(sum(sign * tokens_in::bigint), 0),
               coalesce(sum(sign * tokens_out::bigint), 0),
               coalesce(sum(sign * agents_total::bigint), 0),
               coalesce(sum(sign * agents_successful::bigint), 0),
               coalesce(sum(sign * assets_generated::bigint), 0),
               coalesce(sum(sign * latency_avg_ms::bigint), 0),
               coalesce(sum(sign) FILTER (WHERE latency_avg_ms IS NOT NULL), 0),
               coalesce(sum(sign) FILTER (WHERE latency_p95_ms IS NOT NULL), 0)
        FROM delta
        GROUP BY 1, 2, 3
        ORDER BY 1, 2, 3
        ON CONFLICT ON CONSTRAINT apex_metrics_panel_rollup_key DO UPDATE SET
            runs = r.runs + excluded.runs,
            cost_usd = r.cost_usd + excluded.cost_usd,
            tokens_in = r.tokens_in + excluded.tokens_in,
            tokens_out = r.tokens_out + excluded.tokens_out,
            agents_total = r.agents_total + excluded.agents_total,
            agents_successful = r.agents_successful + excluded.agents_successful,
            assets_generated = r.assets_generated + excluded.assets_generated,
            latency_avg_sum = r.latency_avg_sum + excluded.latency_avg_sum,
            latency_avg_runs = r.latency_avg_runs + excluded.latency_avg_runs,
            latency_p95_runs = r.latency_p95_runs + excluded.latency_p95_runs
        RETURNING 1
    ),
    hist AS (
        INSERT INTO apex_metrics_panel_latency_hist AS h (hour, phase, bucket, runs)
        SELECT date_bin('1 hour', created_at, timestamptz '2000-01-01 00:00:00+00'), phase,
               apex_metrics_latency_bucket(latency_p95_ms), sum(sign)
        FROM delta
        WHERE latency_p95_ms IS NOT NULL
        GROUP BY 1, 2, 3
        ORDER BY 1, 2, 3
        ON CONFLICT ON CONSTRAINT apex_metrics_panel_latency_hist_key DO UPDATE SET runs = h.runs + excluded.runs
        RETURNING 1
    ),
    rolled_daily AS (
        INSERT INTO apex_metrics_panel_rollup_daily AS r (
            day, campaign_id, phase, runs, cost_usd, tokens_in, tokens_out, agents_total,
            agents_successful, assets_generated, latency_avg_sum, latency_avg_runs,
            latency_p95_runs
        )
        SELECT date_bin('1 day', created_at, timestamptz '2000-01-01 00:00:00+00'),
               campaign_id, phase, sum(sign), coalesce(sum(sign * cost_usd), 0),
               coalesce(sum(sign * tokens_in::bigint), 0),
               coalesce(sum(sign * tokens_out::bigint), 0),
               coalesce(sum(sign * agents_total::bigint), 0),
               coalesce(sum(sign * agents_successful::bigint), 0),
               coalesce(sum(sign * assets_generated::bigint), 0),
               coalesce(sum(sign * latency_avg_ms::bigint), 0),
               coalesce(sum(sign) FILTER (WHERE latency_avg_ms IS NOT NULL), 0),
               coalesce(sum(sign) FILTER (WHERE latency_p95_ms IS NOT NULL), 0)
        FROM delta
        GROUP BY 1, 2, 3
        ORDER BY 1, 2, 3
        ON CONFLICT ON CONSTRAINT apex_metrics_panel_rollup_daily_key DO UPDATE SET
            runs = r.runs + excluded.runs,
            cost_usd = r.cost_usd + excluded.cost_usd,
            tokens_in = r.tokens_in + excluded.tokens_in,
            tokens_out = r.tokens_out + excluded.tokens_out,
            agents_total = r.agents_total + excluded.agents_total,
            agents_successful = r.agents_successful + excluded.agents_successful,
            assets_generated = r.assets_generated + excluded.assets_generated,
            latency_avg_sum = r.latency_avg_sum + excluded.latency_avg_sum,
            latency_avg_runs = r.latency_avg_runs + excluded.latency_avg_runs,
            latency_p95_runs = r.latency_p95_runs + excluded.latency_p95_runs
        RETURNING 1
    ),
    hist_daily AS (
        INSERT INTO apex_metrics_panel_latency_hist_daily AS h (day, phase, bucket, runs)
        SELECT date_bin('1 day', created_at, timestamptz '2000-01-01 00:00:00+00'), phase,
               apex_metrics_latency_bucket(latency_p95_ms), sum(sign)
        FROM delta
        WHERE latency_p95_ms IS NOT NULL
        GROUP BY 1, 2, 3
        ORDER BY 1, 2, 3
        ON CONFLICT ON CONSTRAINT apex_metrics_panel_latency_hist_daily_key DO UPDATE SET runs = h.runs + excluded.runs
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM rolled) + (SELECT count(*) FROM hist)
         + (SELECT count(*) FROM rolled_daily) + (SELECT count(*) FROM hist_daily)
    INTO changed;
    IF changed > 0 THEN
        PERFORM nextval('apex_metrics_panel_change_seq');
        PERFORM pg_notify('apex_metrics_panel', '');
    END IF;
    RETURN NULL;
END;
$fn$;

-- Rows deleted by one statement.
CREATE OR REPLACE FUNCTION apex_metrics_panel_rollup_deleted() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    changed bigint;
BEGIN
    WITH delta AS MATERIALIZED (
        SELECT -1 AS sign, created_at, campaign_id, phase, cost_usd, tokens_in, tokens_out, agents_total,
               agents_successful, assets_generated, latency_avg_ms, latency_p95_ms
        FROM old_rows
    ),
    rolled AS (
        INSERT INTO apex_metrics_panel_rollup AS r (
            hour, campaign_id, phase, runs, cost_usd, tokens_in, tokens_out, agents_total,
            agents_successful, assets_generated, latency_avg_sum, latency_avg_runs,
            latency_p95_runs
        )
        SELECT date_bin('1 hour', created_at, timestamptz '2000-01-01 00:00:00+00'),
               campaign_id, phase, sum(sign), coalesce(sum(sign * cost_usd), 0),
               coalesce(sum(sign * tokens_in::bigint), 0),
               coalesce(sum(sign * tokens_out::bigint), 0),
               coalesce(sum(sign * agents_total::bigint), 0),
               coalesce(sum(sign * agents_successful::bigint), 0),
               coalesce(sum(sign * assets_generated::bigint), 0),
               coalesce(sum(sign * latency_avg_ms::bigint), 0),
               coalesce(sum(sign) FILTER (WHERE latency_avg_ms IS NOT NULL), 0),
               coalesce(sum(sign) FILTER (WHERE latency_p95_ms IS NOT NULL), 0)
        FROM delta
        GROUP BY 1, 2, 3
        ORDER BY 1, 2, 3
        ON CONFLICT ON CONSTRAINT apex_metrics_panel_rollup_key DO UPDATE SET
            runs = r.runs + excluded.runs,
            cost_usd = r.cost_usd + excluded.cost_usd,
            tokens_in = r.tokens_in + excluded.tokens_in,
            tokens_out = r.tokens_out + excluded.tokens_out,
            agents_total = r.agents_total + excluded.agents_total,
            agents_successful = r.agents_successful + excluded.agents_successful,
            assets_generated = r.assets_generated + excluded.assets_generated,
            latency_avg_sum = r.latency_avg_sum + excluded.latency_avg_sum,
            latency_avg_runs = r.latency_avg_runs + excluded.latency_avg_runs,
            latency_p95_runs = r.latency_p95_runs + excluded.latency_p95_runs
        RETURNING 1
    ),
    hist AS (
        INSERT INTO apex_metrics_panel_latency_hist AS h (hour, phase, bucket, runs)
        SELECT date_bin('1 hour', created_at, timestamptz '2000-01-01 00:00:00+00'), phase,
               apex_metrics_latency_bucket(latency_p95_ms), sum(sign)
        FROM delta
        WHERE latency_p95_ms IS NOT NULL
        GROUP BY 1, 2, 3
        ORDER BY 1, 2, 3
        ON CONFLICT ON CONSTRAINT apex_metrics_panel_latency_hist_key DO UPDATE SET runs = h.runs + excluded.runs
        RETURNING 1
    ),
    rolled_daily AS (
        INSERT INTO apex_metrics_panel_rollup_daily AS r (
            day, campaign_id, phase, runs, cost_usd, tokens_in, tokens_out, agents_total,
            agents_successful, assets_generated, latency_avg_sum, latency_avg_runs,
            latency_p95_runs
        )
        SELECT date_bin('1 day', created_at, timestamptz '2000-01-01 00:00:00+00'),
               campaign_id, phase, sum(sign), coalesce(sum(sign * cost_usd), 0),
               coalesce(sum(sign * tokens_in::bigint), 0),
               coalesce(sum(sign * tokens_out::bigint), 0),
               coalesce(sum(sign * agents_total::bigint), 0),
               coalesce(sum(sign * agents_successful::bigint), 0),
               coalesce(sum(sign * assets_generated::bigint), 0),
               coalesce(sum(sign * latency_avg_ms::bigint), 0),
               coalesce(sum(sign) FILTER (WHERE latency_avg_ms IS NOT NULL), 0),
               coalesce(sum(sign) FILTER (WHERE latency_p95_ms IS NOT NULL), 0)
        FROM delta
        GROUP BY 1, 2, 3
        ORDER BY 1, 2, 3
        ON CONFLICT ON CONSTRAINT apex_metrics_panel_rollup_daily_key DO UPDATE SET
            runs = r.runs + excluded.runs,
            cost_usd = r.cost_usd + excluded.cost_usd,
            tokens_in = r.tokens_in + excluded.tokens_in,
            tokens_out = r.tokens_out + excluded.tokens_out,
            agents_total = r.agents_total + excluded.agents_total,
            agents_successful = r.agents_successful + excluded.agents_successful,
            assets_generated = r.assets_generated + excluded.assets_generated,
            latency_avg_sum = r.latency_avg_sum + excluded.latency_avg_sum,
            latency_avg_runs = r.latency_avg_runs + excluded.latency_avg_runs,
            latency_p95_runs = r.latency_p95_runs + excluded.latency_p95_runs
        RETURNING 1
    ),
    hist_daily AS (
        INSERT INTO apex_metrics_panel_latency_hist_daily AS h (day, phase, bucket, runs)
        SELECT date_bin('1 day', created_at, timestamptz '2000-01-01 00:00:00+00'), phase,
               apex_metrics_latency_bucket(latency_p95_ms), sum(sign)
        FROM delta
        WHERE latency_p95_ms IS NOT NULL
        GROUP BY 1, 2, 3
        ORDER BY 1, 2, 3
        ON CONFLICT ON CONSTRAINT apex_metrics_panel_latency_hist_daily_key DO UPDATE SET runs = h.runs + excluded.runs
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM rolled) + (SELECT count(*) FROM hist)
         + (SELECT count(*) FROM rolled_daily) + (SELECT count(*) FROM hist_daily)
    INTO changed;
    IF changed > 0 THEN
        PERFORM nextval('apex_metrics_panel_change_seq');
        PERFORM pg_notify('apex_metrics_panel', '');
    END IF;
    RETURN NULL;
END;
$fn$;

-- Rows updated by one statement: only those whose panel columns changed.
CREATE OR REPLACE FUNCTION apex_metrics_panel_rollup_updated() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    changed bigint;
BEGIN
    WITH delta AS MATERIALIZED (
        SELECT s.* FROM old_rows o JOIN new_rows n ON n.id = o.id
        CROSS JOIN LATERAL (VALUES
            (-1, o.created_at, o.campaign_id, o.phase, o.cost_usd, o.tokens_in, o.tokens_out,
             o.agents_total, o.agents_successful, o.assets_generated, o.latency_avg_ms,
             o.latency_p95_ms),
            (1, n.created_at, n.campaign_id, n.phase, n.cost_usd, n.tokens_in, n.tokens_out,
             n.agents_total, n.agents_successful, n.assets_generated, n.latency_avg_ms,
             n.latency_p95_ms)
        ) AS s(sign, created_at, campaign_id, phase, cost_usd, tokens_in, tokens_out,
               agents_total, agents_successful, assets_generated, latency_avg_ms,
               latency_p95_ms)
        WHERE (o.created_at, o.campaign_id, o.phase, o.cost_usd, o.tokens_in, o.tokens_out,
               o.agents_total, o.agents_successful, o.assets_generated, o.latency_avg_ms,
               o.latency_p95_ms)
              IS DISTINCT FROM
              (n.created_at, n.campaign_id, n.phase, n.cost_usd, n.tokens_in, n.tokens_out,
               n.agents_total, n.agents_successful, n.assets_generated, n.latency_avg_ms,
               n.latency_p95_ms)
    ),
    rolled AS (
        INSERT INTO apex_metrics_panel_rollup AS r (
            hour, campaign_id, phase, runs, cost_usd, tokens_in, tokens_out, agents_total,
            agents_successful, assets_generated, latency_avg_sum, latency_avg_runs,
            latency_p95_runs
        )
        SELECT date_bin('1 hour', created_at, timestamptz '2000-01-01 00:00:00+00'),
               campaign_id, phase, sum(sign), coalesce(sum(sign * cost_usd), 0),
               coalesce(sum(sign * tokens_in::bigint), 0),
               coalesce(sum(sign * tokens_out::bigint), 0),
               coalesce(sum(sign * agents_total::bigint), 0),
               coalesce(sum(sign * agents_successful::bigint), 0),
               coalesce(sum(sign * assets_generated::bigint), 0),
               coalesce(sum(sign * latency_avg_ms::bigint), 0),
               coalesce(sum(sign) FILTER (WHERE latency_avg_ms IS NOT NULL), 0),
               coalesce(sum(sign) FILTER (WHERE latency_p95_ms IS NOT NULL), 0)
        FROM delta
        GROUP BY 1, 2, 3
        ORDER BY 1, 2, 3
        ON CONFLICT ON CONSTRAINT apex_metrics_panel_rollup_key DO UPDATE SET
            runs = r.runs + excluded.runs,
            cost_usd = r.cost_usd + excluded.cost_usd,
            tokens_in = r.tokens_in + excluded.tokens_in,
            tokens_out = r.tokens_out + excluded.tokens_out,
            agents_total = r.agents_total + excluded.agents_total,
            agents_successful = r.agents_successful + excluded.agents_successful,
            assets_generated = r.assets_generated + excluded.assets_generated,
            latency_avg_sum = r.latency_avg_sum + excluded.latency_avg_sum,
            latency_avg_runs = r.latency_avg_runs + excluded.latency_avg_runs,
            latency_p95_runs = r.latency_p95_runs + excluded.latency_p95_runs
        RETURNING 1
    ),
    hist AS (
        INSERT INTO apex_metrics_panel_latency_hist AS h (hour, phase, bucket, runs)
        SELECT date_bin('1 hour', created_at, timestamptz '2000-01-01 00:00:00+00'), phase,
               apex_metrics_latency_bucket(latency_p95_ms), sum(sign)
        FROM delta
        WHERE latency_p95_ms IS NOT NULL
        GROUP BY 1, 2, 3
        ORDER BY 1, 2, 3
        ON CONFLICT ON CONSTRAINT apex_metrics_panel_latency_hist_key DO UPDATE SET runs = h.runs + excluded.runs
        RETURNING 1
    ),
    rolled_daily AS (
        INSERT INTO apex_metrics_panel_rollup_daily AS r (
            day, campaign_id, phase, runs, cost_usd, tokens_in, tokens_out, agents_total,
            agents_successful, assets_generated, latency_avg_sum, latency_avg_runs,
            latency_p95_runs
        )
        SELECT date_bin('1 day', created_at, timestamptz '2000-01-01 00:00:00+00'),
               campaign_id, phase, sum(sign), coalesce(sum(sign * cost_usd), 0),
               coalesce(sum(sign * tokens_in::bigint), 0),
               coalesce(sum(sign * tokens_out::bigint), 0),
               coalesce(sum(sign * agents_total::bigint), 0),
               coalesce(sum(sign * agents_successful::bigint), 0),
               coalesce(sum(sign * assets_generated::bigint), 0),
               coalesce(sum(sign * latency_avg_ms::bigint), 0),
               coalesce(sum(sign) FILTER (WHERE latency_avg_ms IS NOT NULL), 0),
               coalesce(sum(sign) FILTER (WHERE latency_p95_ms IS NOT NULL), 0)
        FROM delta
        GROUP BY 1, 2, 3
        ORDER BY 1, 2, 3
        ON CONFLICT ON CONSTRAINT apex_metrics_panel_rollup_daily_key DO UPDATE SET
            runs = r.runs + excluded.runs,
            cost_usd = r.cost_usd + excluded.cost_usd,
            tokens_in = r.tokens_in + excluded.tokens_in,
            tokens_out = r.tokens_out + excluded.tokens_out,
            agents_total = r.agents_total + excluded.agents_total,
            agents_successful = r.agents_successful + excluded.agents_successful,
            assets_generated = r.assets_generated + excluded.assets_generated,
            latency_avg_sum = r.latency_avg_sum + excluded.latency_avg_sum,
            latency_avg_runs = r.latency_avg_runs + excluded.latency_avg_runs,
            latency_p95_runs = r.latency_p95_runs + excluded.latency_p95_runs
        RETURNING 1
    ),
    hist_daily AS (
        INSERT INTO apex_metrics_panel_latency_hist_daily AS h (day, phase, bucket, runs)
        SELECT date_bin('1 day', created_at, timestamptz '2000-01-01 00:00:00+00'), phase,
               apex_metrics_latency_bucket(latency_p95_ms), sum(sign)
        FROM delta
        WHERE latency_p95_ms IS NOT NULL
        GROUP BY 1, 2, 3
        ORDER BY 1, 2, 3
        ON CONFLICT ON CONSTRAINT apex_metrics_panel_latency_hist_daily_key DO UPDATE SET runs = h.runs + excluded.runs
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM rolled) + (SELECT count(*) FROM hist)
         + (SELECT count(*) FROM rolled_daily) + (SELECT count(*) FROM hist_daily)
    INTO changed;
    IF changed > 0 THEN
        PERFORM nextval('apex_metrics_panel_change_seq');
        PERFORM pg_notify('apex_metrics_panel', '');
    END IF;
    RETURN NULL;
END;
$fn$;

CREATE OR REPLACE FUNCTION apex_metrics_panel_rollup_truncated() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    TRUNCATE apex_metrics_panel_rollup, apex_metrics_panel_latency_hist,
             apex_metrics_panel_rollup_daily, apex_metrics_panel_latency_hist_daily;
    PERFORM nextval('apex_metrics_panel_change_seq');
    PERFORM pg_notify('apex_metrics_panel', '');
    RETURN NULL;
END;
$fn$;

CREATE OR REPLACE TRIGGER apex_metrics_panel_rollup_insert
    AFTER INSERT ON campaign_metrics
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION apex_metrics_panel_rollup_inserted();

CREATE OR REPLACE TRIGGER apex_metrics_panel_rollup_update
    AFTER UPDATE ON campaign_metrics
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION apex_metrics_panel_rollup_updated();

CREATE OR REPLACE TRIGGER apex_metrics_panel_rollup_delete
    AFTER DELETE ON campaign_metrics
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION apex_metrics_panel_rollup_deleted();

CREATE OR REPLACE TRIGGER apex_metrics_panel_rollup_truncate
    AFTER TRUNCATE ON campaign_metrics
    FOR EACH STATEMENT EXECUTE FUNCTION apex_metrics_panel_rollup_truncated();

-- Backfill from the rows that exist when the migration runs (empty on a fresh database).
INSERT INTO apex_metrics_panel_rollup (
    hour, campaign_id, phase, runs, cost_usd, tokens_in, tokens_out, agents_total,
    agents_successful, assets_generated, latency_avg_sum, latency_avg_runs, latency_p95_runs
)
SELECT date_bin('1 hour', created_at, timestamptz '2000-01-01 00:00:00+00'),
       campaign_id, phase, count(*), coalesce(sum(cost_usd), 0),
       coalesce(sum(tokens_in::bigint), 0), coalesce(sum(tokens_out::bigint), 0),
       coalesce(sum(agents_total::bigint), 0), coalesce(sum(agents_successful::bigint), 0),
       coalesce(sum(assets_generated::bigint), 0), coalesce(sum(latency_avg_ms::bigint), 0),
       count(latency_avg_ms), count(latency_p95_ms)
FROM campaign_metrics
GROUP BY 1, 2, 3
ON CONFLICT ON CONSTRAINT apex_metrics_panel_rollup_key DO NOTHING;

INSERT INTO apex_metrics_panel_latency_hist (hour, phase, bucket, runs)
SELECT date_bin('1 hour', created_at, timestamptz '2000-01-01 00:00:00+00'), phase,
       apex_metrics_latency_bucket(latency_p95_ms), count(*)
FROM campaign_metrics
WHERE latency_p95_ms IS NOT NULL
GROUP BY 1, 2, 3
ON CONFLICT ON CONSTRAINT apex_metrics_panel_latency_hist_key DO NOTHING;

INSERT INTO apex_metrics_panel_rollup_daily (
    day, campaign_id, phase, runs, cost_usd, tokens_in, tokens_out, agents_total,
    agents_successful, assets_generated, latency_avg_sum, latency_avg_runs, latency_p95_runs
)
SELECT date_bin('1 day', hour, timestamptz '2000-01-01 00:00:00+00'), campaign_id, phase,
       sum(runs), sum(cost_usd), sum(tokens_in), sum(tokens_out), sum(agents_total),
       sum(agents_successful), sum(assets_generated), sum(latency_avg_sum),
       sum(latency_avg_runs), sum(latency_p95_runs)
FROM apex_metrics_panel_rollup
GROUP BY 1, 2, 3
ON CONFLICT ON CONSTRAINT apex_metrics_panel_rollup_daily_key DO NOTHING;

INSERT INTO apex_metrics_panel_latency_hist_daily (day, phase, bucket, runs)
SELECT date_bin('1 day', hour, timestamptz '2000-01-01 00:00:00+00'), phase, bucket, sum(runs)
FROM apex_metrics_panel_latency_hist
GROUP BY 1, 2, 3
ON CONFLICT ON CONSTRAINT apex_metrics_panel_latency_hist_daily_key DO NOTHING;
