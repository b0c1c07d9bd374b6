-- MetricsPanel queries (apex_metrics/panel/sources.py).
--
-- Every query reads its window through apex_metrics_panel_sums or apex_metrics_panel_hist
-- (0009_rollup_off_write_path.sql): full UTC days [d1, d2) from the daily rollup, the other full
-- hours [h1, d1) and [d2, h2) from the hourly rollup, partial edge hours [start, h1) and
-- [h2, end) from raw rows, and hours the refresher has not folded yet (logged in
-- apex_metrics_rollup_stale) from raw rows too, all in one snapshot: the figures equal SQL over
-- campaign_metrics at every moment. kpis.Window.tiers computes the bounds; d1 = d2 = h2 skips
-- the daily tier; h1 = h2 = d1 = d2 = end reads raw rows only (short windows, the benchmark's
-- raw mode). A campaign filter on a p95 reads the campaign histogram (0012).
-- campaign and phase are optional filters (NULL = all).

-- name: totals
-- Sums of one window (never averages: the panel derives rates from sums).
SELECT coalesce(sum(runs), 0)::bigint, coalesce(sum(cost_usd), 0),
       coalesce(sum(tokens_in), 0)::bigint, coalesce(sum(tokens_out), 0)::bigint,
       coalesce(sum(agents_total), 0)::bigint, coalesce(sum(agents_successful), 0)::bigint,
       coalesce(sum(assets_generated), 0)::bigint, coalesce(sum(latency_avg_sum), 0)::bigint,
       coalesce(sum(latency_avg_runs), 0)::bigint
FROM apex_metrics_panel_sums(%(start)s, %(end)s, %(h1)s, %(h2)s, %(d1)s, %(d2)s,
                             %(campaign)s, %(phase)s);

-- name: latency_p95
-- p95 of the runs' latency_p95_ms, read from the latency histograms: the upper edge of the first
-- bucket where at least 95 percent of the runs lie.
WITH per_bucket AS (
    SELECT bucket, sum(runs) AS runs
    FROM apex_metrics_panel_hist(%(start)s, %(end)s, %(h1)s, %(h2)s, %(d1)s, %(d2)s,
                                 %(campaign)s, %(phase)s)
    GROUP BY bucket
),
cumulative AS (
    SELECT bucket, sum(runs) OVER (ORDER BY bucket) AS below, sum(runs) OVER () AS total
    FROM per_bucket
)
SELECT apex_metrics_latency_bucket_upper(min(bucket))
FROM cumulative
WHERE total > 0 AND below * 100 >= total * 95;

-- name: series_totals
-- Sums per time bucket of %(width)s seconds, buckets aligned on 2000-01-01 00:00 UTC.
SELECT date_bin(make_interval(secs => %(width)s), t, timestamptz '2000-01-01 00:00:00+00') AS tb,
       coalesce(sum(runs), 0)::bigint, coalesce(sum(cost_usd), 0),
       coalesce(sum(tokens_in), 0)::bigint, coalesce(sum(tokens_out), 0)::bigint,
       coalesce(sum(agents_total), 0)::bigint, coalesce(sum(agents_successful), 0)::bigint,
       coalesce(sum(assets_generated), 0)::bigint, coalesce(sum(latency_avg_sum), 0)::bigint,
       coalesce(sum(latency_avg_runs), 0)::bigint
FROM apex_metrics_panel_sums(%(start)s, %(end)s, %(h1)s, %(h2)s, %(d1)s, %(d2)s,
                             %(campaign)s, %(phase)s)
GROUP BY tb
ORDER BY tb;

-- name: series_p95
-- p95 of run p95s per time bucket (same rule as latency_p95).
WITH per_bucket AS (
    SELECT date_bin(make_interval(secs => %(width)s), t, timestamptz '2000-01-01 00:00:00+00')
               AS tb,
           bucket, sum(runs) AS runs
    FROM apex_metrics_panel_hist(%(start)s, %(end)s, %(h1)s, %(h2)s, %(d1)s, %(d2)s,
                                 %(campaign)s, %(phase)s)
    GROUP BY 1, 2
),
cumulative AS (
    SELECT tb, bucket,
           sum(runs) OVER (PARTITION BY tb ORDER BY bucket) AS below,
           sum(runs) OVER (PARTITION BY tb) AS total
    FROM per_bucket
)
SELECT tb, apex_metrics_latency_bucket_upper(min(bucket))
FROM cumulative
WHERE total > 0 AND below * 100 >= total * 95
GROUP BY tb
ORDER BY tb;

-- name: campaigns
-- Sums per campaign over one window, biggest spenders first.
SELECT campaign_id, coalesce(sum(runs), 0)::bigint, coalesce(sum(cost_usd), 0),
       coalesce(sum(tokens_in), 0)::bigint, coalesce(sum(tokens_out), 0)::bigint,
       coalesce(sum(agents_total), 0)::bigint, coalesce(sum(agents_successful), 0)::bigint,
       coalesce(sum(assets_generated), 0)::bigint, coalesce(sum(latency_avg_sum), 0)::bigint,
       coalesce(sum(latency_avg_runs), 0)::bigint
FROM apex_metrics_panel_sums(%(start)s, %(end)s, %(h1)s, %(h2)s, %(d1)s, %(d2)s,
                             %(campaign)s, %(phase)s)
GROUP BY campaign_id
HAVING sum(runs) > 0
ORDER BY 3 DESC, campaign_id
LIMIT %(limit)s;

-- name: runs
-- The newest runs of a window.
SELECT run_id, campaign_id, phase, agents_total, agents_successful, assets_generated,
       tokens_in, tokens_out, cost_usd, latency_p95_ms, latency_avg_ms, success_rate, created_at
FROM campaign_metrics
WHERE created_at >= %(start)s AND created_at < %(end)s
  AND (%(campaign)s::text IS NULL OR campaign_id = %(campaign)s)
  AND (%(phase)s::text IS NULL OR phase = %(phase)s)
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s;

-- name: filter_options
-- Campaigns and phases seen in the last 90 days of the daily rollup (for the filter lists).
SELECT campaign_id, phase
FROM apex_metrics_rollup
WHERE grain = interval '1 day' AND t >= now() - interval '90 days' AND runs > 0
GROUP BY campaign_id, phase
ORDER BY campaign_id, phase
LIMIT 5000;

-- name: last_run
-- When the newest run was created.
SELECT max(created_at) FROM campaign_metrics;

-- name: watermark
-- Moves whenever a statement that changes a column the panel reads commits (each appends to the
-- stale-hours log) and whenever the refresher folds the log.
SELECT coalesce(max(id), 0), count(*) FROM apex_metrics_rollup_stale;

-- name: refresh_rollup
-- Fold up to %(max_hours)s stale hours before %(before)s into the rollups (in the caller's
-- transaction): the hours folded, 0 when none is stale, -1 when another refresher is at work.
SELECT apex_metrics_rollup_refresh(%(max_hours)s, %(before)s);

-- name: stale_hours
-- Distinct hours waiting for the refresher.
SELECT count(DISTINCT hour) FROM apex_metrics_rollup_stale;
