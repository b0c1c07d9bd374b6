-- 0012_campaign_latency_rollup: campaign-filtered p95s from a rollup; the covering index goes
-- (issue 16).
--
-- The latency histograms had no campaign, so a campaign-filtered p95 read its campaign's raw
-- rows through apex_metrics_panel_campaign_created, an index on (campaign_id, created_at)
-- covering phase and latency_p95_ms. Every insert paid for it: a quarter of the time of a COPY
-- into campaign_metrics, the largest single cost of the write path beyond the data contract's
-- own indexes. Now:
--
-- apex_metrics_rollup_campaign_hist   runs per (grain, t, campaign_id, phase, latency bucket),
--                                     kept by the refresher beside apex_metrics_rollup_hist
--                                     (which stays: reads without a campaign sum fewer rows)
-- apex_metrics_rollup_apply           the one delta function takes the campaign histogram's
--                                     delta too
-- apex_metrics_rollup_refresh         computes it (rows now - hourly campaign histogram); its
--                                     default batch is a day of hours (a delta per campaign is
--                                     larger)
-- apex_metrics_panel_hist             reads the campaign histogram when a campaign is given
--                                     (raw rows only for stale and partial edge hours, found
--                                     through the created_at index)
--
-- Every hour that has rows is logged stale: `db migrate` then builds the campaign histogram once,
-- with progress (the other rollups' deltas are zero).

DROP INDEX IF EXISTS apex_metrics_panel_campaign_created;

CREATE TABLE apex_metrics_rollup_campaign_hist (
    grain interval NOT NULL,
    t timestamptz NOT NULL,
    campaign_id varchar(64) NOT NULL,
    phase varchar(16),
    bucket smallint NOT NULL,  -- apex_metrics_latency_bucket(latency_p95_ms)
    runs bigint NOT NULL,
    CONSTRAINT apex_metrics_rollup_campaign_hist_key
        UNIQUE NULLS NOT DISTINCT (grain, t, campaign_id, phase, bucket)
);

-- A campaign's histogram over a window (the refresher's key above reads by hour).
CREATE INDEX apex_metrics_rollup_campaign_hist_campaign
    ON apex_metrics_rollup_campaign_hist (campaign_id, grain, t);

-- Signed runs of one hour, campaign, phase and latency bucket.
CREATE TYPE apex_metrics_rollup_campaign_hist_delta AS (
    t timestamptz,
    campaign_id varchar(64),
    phase varchar(16),
    bucket smallint,
    runs bigint
);

CREATE OR REPLACE FUNCTION apex_metrics_rollup_truncated() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    TRUNCATE apex_metrics_rollup, apex_metrics_rollup_hist, apex_metrics_rollup_campaign_hist,
        apex_metrics_rollup_stale;
    RETURN NULL;
END
$fn$;

DROP FUNCTION apex_metrics_rollup_refresh(integer, timestamptz);
DROP FUNCTION apex_metrics_rollup_apply(
    interval, apex_metrics_rollup_delta[], apex_metrics_rollup_hist_delta[]
);

-- The one delta function: add signed hourly deltas to the rollup and histograms at one grain
-- ('1 hour' or '1 day'), then drop the rows they emptied.
CREATE FUNCTION apex_metrics_rollup_apply(
    p_grain interval,
    p_sums apex_metrics_rollup_delta[],
    p_hist apex_metrics_rollup_hist_delta[],
    p_campaign_hist apex_metrics_rollup_campaign_hist_delta[]
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

    INSERT INTO apex_metrics_rollup_campaign_hist AS h (grain, t, campaign_id, phase, bucket, runs)
    SELECT p_grain, date_bin(p_grain, d.t, timestamptz '2000-01-01 00:00:00+00'), d.campaign_id,
           d.phase, d.bucket, sum(d.runs)
    FROM unnest(p_campaign_hist) AS d
    GROUP BY 2, 3, 4, 5
    ORDER BY 2, 3, 4, 5
    ON CONFLICT ON CONSTRAINT apex_metrics_rollup_campaign_hist_key
    DO UPDATE SET runs = h.runs + excluded.runs;

    DELETE FROM apex_metrics_rollup
    WHERE grain = p_grain AND runs = 0
      AND t IN (SELECT date_bin(p_grain, d.t, timestamptz '2000-01-01 00:00:00+00')
                FROM unnest(p_sums) AS d);

    DELETE FROM apex_metrics_rollup_hist
    WHERE grain = p_grain AND runs = 0
      AND t IN (SELECT date_bin(p_grain, d.t, timestamptz '2000-01-01 00:00:00+00')
                FROM unnest(p_hist) AS d);

    DELETE FROM apex_metrics_rollup_campaign_hist
    WHERE grain = p_grain AND runs = 0
      AND t IN (SELECT date_bin(p_grain, d.t, timestamptz '2000-01-01 00:00:00+00')
                FROM unnest(p_campaign_hist) AS d);
$fn$;

CREATE FUNCTION apex_metrics_rollup_refresh(
    p_max_hours integer DEFAULT 24, p_before timestamptz DEFAULT 'infinity'
) RETURNS integer
LANGUAGE plpgsql
SET jit = off SET work_mem = '64MB' SET max_parallel_workers_per_gather = 0 AS $fn$
DECLARE
    v_hours timestamptz[];
    v_sums apex_metrics_rollup_delta[];
    v_hist apex_metrics_rollup_hist_delta[];
    v_campaign_hist apex_metrics_rollup_campaign_hist_delta[];
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

    SELECT array_agg(ROW(t, campaign_id, phase, bucket, runs)
                     ::apex_metrics_rollup_campaign_hist_delta)
    INTO v_campaign_hist
    FROM (
        SELECT t, campaign_id, phase, bucket, sum(runs) AS runs
        FROM (
            SELECT date_bin('1 hour', c.created_at, timestamptz '2000-01-01 00:00:00+00') AS t,
                   c.campaign_id, c.phase, apex_metrics_latency_bucket(c.latency_p95_ms) AS bucket,
                   1::bigint AS runs
            FROM unnest(v_hours) AS h(hour)
            JOIN campaign_metrics AS c
              ON c.created_at >= h.hour AND c.created_at < h.hour + interval '1 hour'
            WHERE c.latency_p95_ms IS NOT NULL
            UNION ALL
            SELECT t, campaign_id, phase, bucket, -runs
            FROM apex_metrics_rollup_campaign_hist
            WHERE grain = interval '1 hour' AND t = ANY (v_hours)
        ) AS both_sides
        GROUP BY t, campaign_id, phase, bucket
        HAVING sum(runs) <> 0
    ) AS delta;

    IF v_sums IS NOT NULL OR v_hist IS NOT NULL OR v_campaign_hist IS NOT NULL THEN
        PERFORM apex_metrics_rollup_apply(interval '1 hour', coalesce(v_sums, '{}'),
                                          coalesce(v_hist, '{}'), coalesce(v_campaign_hist, '{}'));
        PERFORM apex_metrics_rollup_apply(interval '1 day', coalesce(v_sums, '{}'),
                                          coalesce(v_hist, '{}'), coalesce(v_campaign_hist, '{}'));
    END IF;
    RETURN cardinality(v_hours);
END
$fn$;

-- With a campaign, the rollup tiers read the campaign histogram.
CREATE OR REPLACE FUNCTION apex_metrics_panel_hist(
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
      AND p_campaign IS NULL
    UNION ALL
    SELECT r.t, r.bucket, r.runs
    FROM apex_metrics_rollup_campaign_hist AS r
    WHERE r.grain = interval '1 day' AND r.t >= p_d1 AND r.t < p_d2
      AND NOT EXISTS (SELECT 1 FROM stale AS s
                      WHERE s.hour >= r.t AND s.hour < r.t + interval '1 day')
      AND (p_phase IS NULL OR r.phase = p_phase)
      AND r.campaign_id = p_campaign
    UNION ALL
    SELECT r.t, r.bucket, r.runs
    FROM apex_metrics_rollup_hist AS r
    WHERE r.grain = interval '1 hour'
      AND ((r.t >= p_h1 AND r.t < p_d1) OR (r.t >= p_d2 AND r.t < p_h2))
      AND NOT EXISTS (SELECT 1 FROM stale AS s WHERE s.hour = r.t)
      AND (p_phase IS NULL OR r.phase = p_phase)
      AND p_campaign IS NULL
    UNION ALL
    SELECT r.t, r.bucket, r.runs
    FROM apex_metrics_rollup_campaign_hist AS r
    WHERE r.grain = interval '1 hour'
      AND ((r.t >= p_h1 AND r.t < p_d1) OR (r.t >= p_d2 AND r.t < p_h2))
      AND NOT EXISTS (SELECT 1 FROM stale AS s WHERE s.hour = r.t)
      AND (p_phase IS NULL OR r.phase = p_phase)
      AND r.campaign_id = p_campaign
    UNION ALL
    SELECT r.t, r.bucket, r.runs
    FROM (SELECT DISTINCT date_bin('1 day', hour, timestamptz '2000-01-01 00:00:00+00') AS day
          FROM stale WHERE hour >= p_d1 AND hour < p_d2) AS stale_day
    JOIN apex_metrics_rollup_hist AS r
      ON r.grain = interval '1 hour' AND r.t >= stale_day.day
     AND r.t < stale_day.day + interval '1 day'
    WHERE NOT EXISTS (SELECT 1 FROM stale AS s WHERE s.hour = r.t)
      AND (p_phase IS NULL OR r.phase = p_phase)
      AND p_campaign IS NULL
    UNION ALL
    SELECT r.t, r.bucket, r.runs
    FROM (SELECT DISTINCT date_bin('1 day', hour, timestamptz '2000-01-01 00:00:00+00') AS day
          FROM stale WHERE hour >= p_d1 AND hour < p_d2) AS stale_day
    JOIN apex_metrics_rollup_campaign_hist AS r
      ON r.grain = interval '1 hour' AND r.t >= stale_day.day
     AND r.t < stale_day.day + interval '1 day'
    WHERE NOT EXISTS (SELECT 1 FROM stale AS s WHERE s.hour = r.t)
      AND (p_phase IS NULL OR r.phase = p_phase)
      AND r.campaign_id = p_campaign
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

INSERT INTO apex_metrics_rollup_stale (hour)
SELECT DISTINCT date_bin('1 hour', created_at, timestamptz '2000-01-01 00:00:00+00')
FROM campaign_metrics
ORDER BY 1;
