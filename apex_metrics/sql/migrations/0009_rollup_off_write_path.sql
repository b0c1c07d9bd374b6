-- 0009_rollup_off_write_path: panel rollups maintained off the insert path (issue 16).
--
-- Before: statement triggers upserted hourly and daily rollups and latency histograms inside
-- every writer's transaction (and sent a NOTIFY, which serialises commits), so writers paid for
-- the panel and writers of one (hour, campaign, phase) queued on one rollup row.
--
-- Now, in the style of real-time continuous aggregates:
--
-- apex_metrics_rollup_stale   append-only log of the hours whose rollup may be out of date.
--                             One statement trigger per write statement appends the distinct
--                             hours it touched (old and new hours of an update that changes a
--                             column the panel reads; deleted rows' hours). No row is ever
--                             updated, so writers never wait on each other here.
-- apex_metrics_rollup         sums per (grain, t, campaign_id, phase); grain '1 hour' or '1 day'
-- apex_metrics_rollup_hist    runs per (grain, t, phase, latency bucket) of latency_p95_ms
--
-- The refresher (apex_metrics_rollup_refresh, run by the panel and by `apex-metrics rollup`)
-- takes a batch of stale hours, deletes their log entries, and in the same transaction applies
-- (rows now - hourly rollup) of those hours to both grains through one delta function.
-- Readers (apex_metrics_panel_sums / _hist) read rollups for clean hours and days and raw rows
-- for stale hours and partial edge hours, in one snapshot: exact at every moment.
--
-- The old rollup tables are dropped; every hour that has rows is logged as stale, so the
-- refresher rebuilds the rollups once (`db migrate` runs it with progress).

DROP TRIGGER IF EXISTS apex_metrics_panel_rollup_insert ON campaign_metrics;
DROP TRIGGER IF EXISTS apex_metrics_panel_rollup_update ON campaign_metrics;
DROP TRIGGER IF EXISTS apex_metrics_panel_rollup_delete ON campaign_metrics;
DROP TRIGGER IF EXISTS apex_metrics_panel_rollup_truncate ON campaign_metrics;
DROP FUNCTION IF EXISTS apex_metrics_panel_rollup_inserted();
DROP FUNCTION IF EXISTS apex_metrics_panel_rollup_updated();
DROP FUNCTION IF EXISTS apex_metrics_panel_rollup_deleted();
DROP FUNCTION IF EXISTS apex_metrics_panel_rollup_truncated();
DROP TABLE IF EXISTS apex_metrics_panel_rollup, apex_metrics_panel_rollup_daily,
    apex_metrics_panel_latency_hist, apex_metrics_panel_latency_hist_daily;
DROP SEQUENCE IF EXISTS apex_metrics_panel_change_seq;

CREATE TABLE apex_metrics_rollup (
    grain interval NOT NULL,  -- '1 hour' or '1 day'
    t timestamptz NOT NULL,  -- bucket start: date_bin(grain, created_at, 2000-01-01 UTC)
    campaign_id varchar(64) NOT NULL,
    phase varchar(16),
    runs bigint NOT NULL,
    cost_usd numeric NOT NULL,
    tokens_in bigint NOT NULL,
    tokens_out bigint NOT NULL,
    agents_total bigint NOT NULL,
    agents_successful bigint NOT NULL,
    assets_generated bigint NOT NULL,
    latency_avg_sum bigint NOT NULL,
    latency_avg_runs bigint NOT NULL,
    latency_p95_runs bigint NOT NULL,
    CONSTRAINT apex_metrics_rollup_key UNIQUE NULLS NOT DISTINCT (grain, t, campaign_id, phase)
);

CREATE TABLE apex_metrics_rollup_hist (
    grain interval NOT NULL,
    t timestamptz NOT NULL,
    phase varchar(16),
    bucket smallint NOT NULL,  -- apex_metrics_latency_bucket(latency_p95_ms)
    runs bigint NOT NULL,
    CONSTRAINT apex_metrics_rollup_hist_key UNIQUE NULLS NOT DISTINCT (grain, t, phase, bucket)
);

CREATE TABLE apex_metrics_rollup_stale (
    id bigint GENERATED ALWAYS AS IDENTITY,  -- the panel's change watermark reads it
    hour timestamptz NOT NULL
);

CREATE INDEX apex_metrics_rollup_stale_hour ON apex_metrics_rollup_stale (hour);

-- Signed sums of one hour, campaign and phase (a delta the refresher applies).
CREATE TYPE apex_metrics_rollup_delta AS (
    t timestamptz,
    campaign_id varchar(64),
    phase varchar(16),
    runs bigint,
    cost_usd numeric,
    tokens_in bigint,
    tokens_out bigint,
    agents_total bigint,
    agents_successful bigint,
    assets_generated bigint,
    latency_avg_sum bigint,
    latency_avg_runs bigint,
    latency_p95_runs bigint
);

-- Signed runs of one hour, phase and latency bucket.
CREATE TYPE apex_metrics_rollup_hist_delta AS (
    t timestamptz,
    phase varchar(16),
    bucket smallint,
    runs bigint
);

-- The write path: log the hours a statement touched. Updates count only when a column the
-- panel reads changed (the sync engine's bookkeeping updates log nothing).
CREATE FUNCTION apex_metrics_rollup_mark_stale() RETURNS trigger
LANGUAGE plpgsql SET jit = off AS $fn$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO apex_metrics_rollup_stale (hour)
        SELECT DISTINCT date_bin('1 hour', created_at, timestamptz '2000-01-01 00:00:00+00')
        FROM apex_rollup_new;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO apex_metrics_rollup_stale (hour)
        SELECT DISTINCT date_bin('1 hour', v.created_at, timestamptz '2000-01-01 00:00:00+00')
        FROM apex_rollup_old AS o
        JOIN apex_rollup_new AS n ON n.id = o.id
        CROSS JOIN LATERAL (VALUES (o.created_at), (n.created_at)) AS v(created_at)
        WHERE (o.created_at, o.campaign_id, o.phase, o.cost_usd, o.tokens_in, o.tokens_out,
               o.agents_total, o.agents_successful, o.assets_generated, o.latency_avg_ms,
               o.latency_p95_ms)
              IS DISTINCT FROM
              (n.created_at, n.campaign_id, n.phase, n.cost_usd, n.tokens_in, n.tokens_out,
               n.agents_total, n.agents_successful, n.assets_generated, n.latency_avg_ms,
               n.latency_p95_ms);
    ELSE
        INSERT INTO apex_metrics_rollup_stale (hour)
        SELECT DISTINCT date_bin('1 hour', created_at, timestamptz '2000-01-01 00:00:00+00')
        FROM apex_rollup_old;
    END IF;
    RETURN NULL;
END
$fn$;

CREATE FUNCTION apex_metrics_rollup_truncated() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    TRUNCATE apex_metrics_rollup, apex_metrics_rollup_hist, apex_metrics_rollup_stale;
    RETURN NULL;
END
$fn$;

CREATE TRIGGER apex_metrics_rollup_inserted
    AFTER INSERT ON campaign_metrics
    REFERENCING NEW TABLE AS apex_rollup_new
    FOR EACH STATEMENT EXECUTE FUNCTION apex_metrics_rollup_mark_stale();

CREATE TRIGGER apex_metrics_rollup_updated
    AFTER UPDATE ON campaign_metrics
    REFERENCING OLD TABLE AS apex_rollup_old NEW TABLE AS apex_rollup_new
    FOR EACH STATEMENT EXECUTE FUNCTION apex_metrics_rollup_mark_stale();

CREATE TRIGGER apex_metrics_rollup_deleted
    AFTER DELETE ON campaign_metrics
    REFERENCING OLD TABLE AS apex_rollup_old
    FOR EACH STATEMENT EXECUTE FUNCTION apex_metrics_rollup_mark_stale();

CREATE TRIGGER apex_metrics_rollup_truncated
    AFTER TRUNCATE ON campaign_metrics
    FOR EACH STATEMENT EXECUTE FUNCTION apex_metrics_rollup_truncated();

-- The one delta function: add signed hourly deltas to the rollup and histogram at one grain
-- ('1 hour' or '1 day'), then drop the rows they emptied.
CREATE FUNCTION apex_metrics_rollup_apply(
    p_grain interval,
    p_sums apex_metrics_rollup_delta[],
    p_hist apex_metrics_rollup_hist_delta[]
) RETURNS void
LANGUAGE sql AS $fn$
    INSERT INTO apex_metrics_rollup AS r (
        grain, t, campaign_id, phase, runs, cost_usd, tokens_in, tokens_out, agents_total,
        agents_successful, assets_generated, latency_avg_sum, latency_avg_runs, latency_p95_runs
    )
    SELECT p_grain, date_bin(p_grain, d.t, timestamptz '2000-01-01 00:00:00+00'), d.campaign_id,
           d.phase, sum(d.runs), sum(d.cost_usd), sum(d.tokens_in), sum(d.tokens_out),
           sum(d.agents_total), sum(d.agents_successful), sum(d.assets_generated),
           sum(d.latency_avg_sum), sum(d.latency_avg_runs), sum(d.latency_p95_runs)
    FROM unnest(p_sums) AS d
    GROUP BY 2, 3, 4
    ORDER BY 2, 3, 4
    ON CONFLICT ON CONSTRAINT apex_metrics_rollup_key DO UPDATE SET
        runs = r.runs + excluded.runs,
        cost_usd = r.cost_usd + excluded.cost_usd,
        tokens_in = r.tokens_in + excluded.tokens_in,
        tokens_out = r.tokens_out + excluded.tokens_out,
        agents_total = r.agents_total + excluded.agents_total,
        agents_successful = r.agents_successful + excluded.agents_successful,
        assets_generated = r.assets_generated + excluded.assets_generated,
        latency_avg_sum = r.latency_avg_sum + excluded.latency_avg_sum,
        latency_avg_runs = r.latency_avg_runs + excluded.latency_avg_runs,
        latency_p95_runs = r.latency_p95_runs + excluded.latency_p95_runs;

    INSERT INTO apex_metrics_rollup_hist AS h (grain, t, phase, bucket, runs)
    SELECT p_grain, date_bin(p_grain, d.t, timestamptz '2000-01-01 00:00:00+00'), d.phase,
           d.bucket, sum(d.runs)
    FROM unnest(p_hist) AS d
    GROUP BY 2, 3, 4
    ORDER BY 2, 3, 4
    ON CONFLICT ON CONSTRAINT apex_metrics_rollup_hist_key DO UPDATE SET runs = h.runs + excluded.runs;

    DELETE FROM apex_metrics_rollup
    WHERE grain = p_grain AND runs = 0
      AND t IN (SELECT date_bin(p_grain, d.t, timestamptz '2000-01-01 00:00:00+00')
                FROM unnest(p_sums) AS d);

    DELETE FROM apex_metrics_rollup_hist
    WHERE grain = p_grain AND runs = 0
      AND t IN (SELECT date_bin(p_grain, d.t, timestamptz '2000-01-01 00:00:00+00')
                FROM unnest(p_hist) AS d);
$fn$;

-- The refresher: fold up to p_max_hours stale hours before p_before into the rollups, in the
-- caller's transaction (the refresher loop leaves the open hour, which panel windows ending now
-- read raw anyway, to every few seconds: refolding it costs as many rows as it holds). Returns the hours folded, 0 when none are stale, -1 when another refresher is
-- at work (one at a time: transaction-level advisory lock, key "apexroll"). Its aggregates are
-- planned from estimates that are far off (hour ranges of an array), so it sets enough memory
-- to hash them and no parallel workers.
CREATE FUNCTION apex_metrics_rollup_refresh(
    p_max_hours integer DEFAULT 168, p_before timestamptz DEFAULT 'infinity'
) RETURNS integer
LANGUAGE plpgsql
SET jit = off SET work_mem = '64MB' SET max_parallel_workers_per_gather = 0 AS $fn$
DECLARE
    v_hours timestamptz[];
    v_sums apex_metrics_rollup_delta[];
    v_hist apex_metrics_rollup_hist_delta[];
BEGIN
    IF NOT pg_try_advisory_xact_lock(7020383461643545708) THEN
        RETURN -1;
    END IF;
    SELECT array_agg(hour ORDER BY hour) INTO v_hours
    FROM (SELECT DISTINCT hour FROM apex_metrics_rollup_stale WHERE hour < p_before
          ORDER BY hour LIMIT p_max_hours) s;
    IF v_hours IS NULL THEN
        RETURN 0;
    END IF;
    -- Entries written by transactions this snapshot cannot see stay: their hours stay stale.
    DELETE FROM apex_metrics_rollup_stale WHERE hour = ANY (v_hours);

    -- Delta of each hour: its rows now, minus what the hourly rollup holds.
    SELECT array_agg(ROW(t, campaign_id, phase, runs, cost_usd, tokens_in, tokens_out,
                         agents_total, agents_successful, assets_generated, latency_avg_sum,
                         latency_avg_runs, latency_p95_runs)::apex_metrics_rollup_delta)
    INTO v_sums
    FROM (
        SELECT t, campaign_id, phase, sum(runs) AS runs, sum(cost_usd) AS cost_usd,
               sum(tokens_in) AS tokens_in, sum(tokens_out) AS tokens_out,
               sum(agents_total) AS agents_total, sum(agents_successful) AS agents_successful,
               sum(assets_generated) AS assets_generated, sum(latency_avg_sum) AS latency_avg_sum,
               sum(latency_avg_runs) AS latency_avg_runs, sum(latency_p95_runs) AS latency_p95_runs
        FROM (
            SELECT date_bin('1 hour', c.created_at, timestamptz '2000-01-01 00:00:00+00') AS t,
                   c.campaign_id, c.phase, 1::bigint AS runs, coalesce(c.cost_usd, 0) AS cost_usd,
                   coalesce(c.tokens_in, 0)::bigint AS tokens_in,
                   coalesce(c.tokens_out, 0)::bigint AS tokens_out,
                   coalesce(c.agents_total, 0)::bigint AS agents_total,
                   coalesce(c.agents_successful, 0)::bigint AS agents_successful,
                   coalesce(c.assets_generated, 0)::bigint AS assets_generated,
                   coalesce(c.latency_avg_ms, 0)::bigint AS latency_avg_sum,
                   (c.latency_avg_ms IS NOT NULL)::int::bigint AS latency_avg_runs,
                   (c.latency_p95_ms IS NOT NULL)::int::bigint AS latency_p95_runs
            FROM unnest(v_hours) AS h(hour)
            JOIN campaign_metrics AS c
              ON c.created_at >= h.hour AND c.created_at < h.hour + interval '1 hour'
            UNION ALL
            SELECT t, campaign_id, phase, -runs, -cost_usd, -tokens_in, -tokens_out,
                   -agents_total, -agents_successful, -assets_generated, -latency_avg_sum,
                   -latency_avg_runs, -latency_p95_runs
            FROM apex_metrics_rollup
            WHERE grain = interval '1 hour' AND t = ANY (v_hours)
        ) AS both_sides
        GROUP BY t, campaign_id, phase
        HAVING sum(runs) <> 0 OR sum(cost_usd) <> 0 OR sum(tokens_in) <> 0
            OR sum(tokens_out) <> 0 OR sum(agents_total) <> 0 OR sum(agents_successful) <> 0
            OR sum(assets_generated) <> 0 OR sum(latency_avg_sum) <> 0
            OR sum(latency_avg_runs) <> 0 OR sum(latency_p95_runs) <> 0
    ) AS delta;

    SELECT array_agg(ROW(t, phase, bucket, runs)::apex_metrics_rollup_hist_delta)
    INTO v_hist
    FROM (
        SELECT t, phase, bucket, sum(runs) AS runs
        FROM (
            SELECT date_bin('1 hour', c.created_at, timestamptz '2000-01-01 00:00:00+00') AS t,
                   c.phase, apex_metrics_latency_bucket(c.latency_p95_ms) AS bucket,
                   1::bigint AS runs
            FROM unnest(v_hours) AS h(hour)
            JOIN campaign_metrics AS c
              ON c.created_at >= h.hour AND c.created_at < h.hour + interval '1 hour'
            WHERE c.latency_p95_ms IS NOT NULL
            UNION ALL
            SELECT t, phase, bucket, -runs
            FROM apex_metrics_rollup_hist
            WHERE grain = interval '1 hour' AND t = ANY (v_hours)
        ) AS both_sides
        GROUP BY t, phase, bucket
        HAVING sum(runs) <> 0
    ) AS delta;

    IF v_sums IS NOT NULL OR v_hist IS NOT NULL THEN
        PERFORM apex_metrics_rollup_apply(interval '1 hour', coalesce(v_sums, '{}'),
                                          coalesce(v_hist, '{}'));
        PERFORM apex_metrics_rollup_apply(interval '1 day', coalesce(v_sums, '{}'),
                                          coalesce(v_hist, '{}'));
    END IF;
    RETURN cardinality(v_hours);
END
$fn$;

-- Readers. A window [p_start, p_end) is read as: full UTC days [p_d1, p_d2) from the daily
-- rollup, other full hours [p_h1, p_d1) and [p_d2, p_h2) from the hourly rollup, partial edge
-- hours from raw rows (kpis.Window.tiers computes the bounds; p_h1 = p_h2 = p_d1 = p_d2 = p_end
-- reads raw rows only). A stale hour is read from raw rows, and a day holding one from its
-- other hours. Each row out is one rollup row (t = its bucket start) or one raw run (t = created_at).
CREATE FUNCTION apex_metrics_panel_sums(
    p_start timestamptz, p_end timestamptz, p_h1 timestamptz, p_h2 timestamptz,
    p_d1 timestamptz, p_d2 timestamptz, p_campaign text, p_phase text
) RETURNS TABLE (
    t timestamptz, campaign_id varchar(64), runs bigint, cost_usd numeric, tokens_in bigint,
    tokens_out bigint, agents_total bigint, agents_successful bigint, assets_generated bigint,
    latency_avg_sum bigint, latency_avg_runs bigint
)
LANGUAGE sql STABLE AS $fn$
    WITH stale AS MATERIALIZED (
        SELECT DISTINCT hour FROM apex_metrics_rollup_stale
        WHERE hour >= p_h1 AND hour < p_h2
    )
    SELECT r.t, r.campaign_id, r.runs, r.cost_usd, r.tokens_in, r.tokens_out, r.agents_total,
           r.agents_successful, r.assets_generated, r.latency_avg_sum, r.latency_avg_runs
    FROM apex_metrics_rollup AS r
    WHERE r.grain = interval '1 day' AND r.t >= p_d1 AND r.t < p_d2
      AND NOT EXISTS (SELECT 1 FROM stale AS s
                      WHERE s.hour >= r.t AND s.hour < r.t + interval '1 day')
      AND (p_campaign IS NULL OR r.campaign_id = p_campaign)
      AND (p_phase IS NULL OR r.phase = p_phase)
    UNION ALL
    SELECT r.t, r.campaign_id, r.runs, r.cost_usd, r.tokens_in, r.tokens_out, r.agents_total,
           r.agents_successful, r.assets_generated, r.latency_avg_sum, r.latency_avg_runs
    FROM apex_metrics_rollup AS r
    WHERE r.grain = interval '1 hour'
      AND ((r.t >= p_h1 AND r.t < p_d1) OR (r.t >= p_d2 AND r.t < p_h2))
      AND NOT EXISTS (SELECT 1 FROM stale AS s WHERE s.hour = r.t)
      AND (p_campaign IS NULL OR r.campaign_id = p_campaign)
      AND (p_phase IS NULL OR r.phase = p_phase)
    UNION ALL
    SELECT r.t, r.campaign_id, r.runs, r.cost_usd, r.tokens_in, r.tokens_out, r.agents_total,
           r.agents_successful, r.assets_generated, r.latency_avg_sum, r.latency_avg_runs
    FROM (SELECT DISTINCT date_bin('1 day', hour, timestamptz '2000-01-01 00:00:00+00') AS day
          FROM stale WHERE hour >= p_d1 AND hour < p_d2) AS stale_day
    JOIN apex_metrics_rollup AS r
      ON r.grain = interval '1 hour' AND r.t >= stale_day.day
     AND r.t < stale_day.day + interval '1 day'
    WHERE NOT EXISTS (SELECT 1 FROM stale AS s WHERE s.hour = r.t)
      AND (p_campaign IS NULL OR r.campaign_id = p_campaign)
      AND (p_phase IS NULL OR r.phase = p_phase)
    UNION ALL
    SELECT c.created_at, c.campaign_id, 1, c.cost_usd, c.tokens_in, c.tokens_out,
           c.agents_total, c.agents_successful, c.assets_generated, c.latency_avg_ms,
           (c.latency_avg_ms IS NOT NULL)::int
    FROM campaign_metrics AS c
    WHERE ((c.created_at >= p_start AND c.created_at < p_h1)
           OR (c.created_at >= p_h2 AND c.created_at < p_end))
      AND (p_campaign IS NULL OR c.campaign_id = p_campaign)
      AND (p_phase IS NULL OR c.phase = p_phase)
    UNION ALL
    SELECT c.created_at, c.campaign_id, 1, c.cost_usd, c.tokens_in, c.tokens_out,
           c.agents_total, c.agents_successful, c.assets_generated, c.latency_avg_ms,
           (c.latency_avg_ms IS NOT NULL)::int
    FROM stale AS s
    JOIN campaign_metrics AS c
      ON c.created_at >= s.hour AND c.created_at < s.hour + interval '1 hour'
    WHERE (p_campaign IS NULL OR c.campaign_id = p_campaign)
      AND (p_phase IS NULL OR c.phase = p_phase)
$fn$;

-- The same tiers for the latency histogram: (t, bucket, runs). The histograms have no
-- campaign: with a campaign filter the caller passes raw-only bounds.
CREATE FUNCTION apex_metrics_panel_hist(
    p_start timestamptz, p_end timestamptz, p_h1 timestamptz, p_h2 timestamptz,
    p_d1 timestamptz, p_d2 timestamptz, p_campaign text, p_phase text
) RETURNS TABLE (t timestamptz, bucket smallint, runs bigint)
LANGUAGE sql STABLE AS $fn$
    WITH stale AS MATERIALIZED (
        SELECT DISTINCT hour FROM apex_metrics_rollup_stale
        WHERE hour >= p_h1 AND hour < p_h2
    )
    SELECT r.t, r.bucket, r.runs
    FROM apex_metrics_rollup_hist AS r
    WHERE r.grain = interval '1 day' AND r.t >= p_d1 AND r.t < p_d2
      AND NOT EXISTS (SELECT 1 FROM stale AS s
                      WHERE s.hour >= r.t AND s.hour < r.t + interval '1 day')
      AND (p_phase IS NULL OR r.phase = p_phase)
    UNION ALL
    SELECT r.t, r.bucket, r.runs
    FROM apex_metrics_rollup_hist AS r
    WHERE r.grain = interval '1 hour'
      AND ((r.t >= p_h1 AND r.t < p_d1) OR (r.t >= p_d2 AND r.t < p_h2))
      AND NOT EXISTS (SELECT 1 FROM stale AS s WHERE s.hour = r.t)
      AND (p_phase IS NULL OR r.phase = p_phase)
    UNION ALL
    SELECT r.t, r.bucket, r.runs
    FROM (SELECT DISTINCT date_bin('1 day', hour, timestamptz '2000-01-01 00:00:00+00') AS day
          FROM stale WHERE hour >= p_d1 AND hour < p_d2) AS stale_day
    JOIN apex_metrics_rollup_hist AS r
      ON r.grain = interval '1 hour' AND r.t >= stale_day.day
     AND r.t < stale_day.day + interval '1 day'
    WHERE NOT EXISTS (SELECT 1 FROM stale AS s WHERE s.hour = r.t)
      AND (p_phase IS NULL OR r.phase = p_phase)
    UNION ALL
    SELECT c.created_at, apex_metrics_latency_bucket(c.latency_p95_ms), 1
    FROM campaign_metrics AS c
    WHERE c.latency_p95_ms IS NOT NULL
      AND ((c.created_at >= p_start AND c.created_at < p_h1)
           OR (c.created_at >= p_h2 AND c.created_at < p_end))
      AND (p_campaign IS NULL OR c.campaign_id = p_campaign)
      AND (p_phase IS NULL OR c.phase = p_phase)
    UNION ALL
    SELECT c.created_at, apex_metrics_latency_bucket(c.latency_p95_ms), 1
    FROM stale AS s
    JOIN campaign_metrics AS c
      ON c.created_at >= s.hour AND c.created_at < s.hour + interval '1 hour'
    WHERE c.latency_p95_ms IS NOT NULL
      AND (p_campaign IS NULL OR c.campaign_id = p_campaign)
      AND (p_phase IS NULL OR c.phase = p_phase)
$fn$;

-- Every hour that has rows is stale: the refresher builds the rollups from scratch.
INSERT INTO apex_metrics_rollup_stale (hour)
SELECT DISTINCT date_bin('1 hour', created_at, timestamptz '2000-01-01 00:00:00+00')
FROM campaign_metrics
ORDER BY 1;
