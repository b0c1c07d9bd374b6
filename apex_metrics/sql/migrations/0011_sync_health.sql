-- 0011_sync_health: one definition of the sync health figures (issue 17).
--
-- `sync status`, the panel, `verify` and the engine's gauges each counted pending, in flight,
-- dead and lag their own way (the panel's pending held the rows in flight, verify's backlog the
-- dead ones, the panel's lag used the web server's clock). They all read this view now,
-- through apex_metrics.sync.status.read_health. Over the rows not delivered at their current
-- version (exported_version < version), each in exactly one of the first three figures:
--
--   pending      waiting to be sent: neither dead nor in flight (retrying rows included)
--   in_flight    leased now: a claim's lease that has not expired (lease_until >= the clock)
--   dead         dead-lettered at its current version (sync_dead_version = version); a newer
--                version of the row is pending again
--   retrying     pending rows whose next attempt is scheduled later (a part of pending)
--   lag_seconds  age of the oldest pending row's change (updated_at), 0 when nothing is
--                pending; in flight and dead rows do not count
--
-- Every figure uses one reading of the database clock (clock_timestamp(), as the claim does),
-- never the clock of the machine that asks.

CREATE VIEW v_sync_health AS
WITH clock AS (
    SELECT clock_timestamp() AS now
), undelivered AS (
    SELECT c.updated_at,
           c.sync_next_attempt_at > clock.now AS scheduled_later,
           c.sync_dead_version = c.version AS dead,
           coalesce(l.lease_until >= clock.now, false) AS leased
    FROM campaign_metrics AS c
    CROSS JOIN clock
    LEFT JOIN sync_leases AS l ON l.id = c.id
    WHERE c.exported_version < c.version
)
SELECT count(*) FILTER (WHERE NOT dead AND NOT leased) AS pending,
       count(*) FILTER (WHERE NOT dead AND leased) AS in_flight,
       count(*) FILTER (WHERE dead) AS dead,
       count(*) FILTER (WHERE NOT dead AND NOT leased AND scheduled_later) AS retrying,
       greatest(coalesce(extract(epoch FROM (SELECT now FROM clock)
                                            - min(updated_at) FILTER (WHERE NOT dead
                                                                        AND NOT leased)),
                         0), 0)::float8 AS lag_seconds
FROM undelivered;
