-- 0007_sync_leases: leases and attempt counts move off campaign_metrics into a narrow table.
--
-- A claim wrote the lease into the wide row: a new version of it, and (once a page's free
-- space was used up, after about a third of the rows on it) a new entry in each of its seven
-- indexes, before the acknowledgement wrote every index again. A claim now locks the row
-- (FOR UPDATE SKIP LOCKED, no new row version) and writes its lease here; the acknowledgement
-- deletes it. A lease row stays only while a row is in flight, or failed and is retried or
-- dead (then it keeps the attempt count that `sync status` shows).
--
--   in flight  sync_leases.lease_until >= now()      (a claim by lease_owner)
--   attempts   sync_leases.attempts counts deliveries of attempt_version; a new version
--              starts again at 1; no lease row: no attempt yet
--
-- Stop the sync engines before applying it: an engine of an earlier version claims through
-- the columns dropped here.

CREATE TABLE sync_leases (
    id bigint PRIMARY KEY,  -- campaign_metrics.id
    lease_owner text,
    lease_until timestamptz,
    attempts integer NOT NULL DEFAULT 0,
    attempt_version bigint NOT NULL DEFAULT 0
);

INSERT INTO sync_leases (id, lease_owner, lease_until, attempts, attempt_version)
SELECT id, sync_lease_owner, sync_lease_until, sync_attempts, sync_attempt_version
FROM campaign_metrics
WHERE sync_lease_owner IS NOT NULL OR sync_attempts > 0;

ALTER TABLE campaign_metrics
    DROP COLUMN sync_lease_owner,
    DROP COLUMN sync_lease_until,
    DROP COLUMN sync_attempts,
    DROP COLUMN sync_attempt_version;

-- The free space kept for the claim's in-place (HOT) update is no longer used.
ALTER TABLE campaign_metrics RESET (fillfactor);

-- A lease goes with its row: deleted rows (and a TRUNCATE) take theirs along, so that no
-- lease outlives its row (and, after TRUNCATE ... RESTART IDENTITY, holds up a new one).
CREATE FUNCTION apex_metrics_forget_leases() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        TRUNCATE sync_leases;
    ELSE
        DELETE FROM sync_leases AS l USING apex_old_rows AS o WHERE l.id = o.id;
    END IF;
    RETURN NULL;
END
$$;

ALTER FUNCTION apex_metrics_forget_leases() SET jit = off;

CREATE TRIGGER apex_metrics_forget_leases_deleted
    AFTER DELETE ON campaign_metrics
    REFERENCING OLD TABLE AS apex_old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION apex_metrics_forget_leases();

CREATE TRIGGER apex_metrics_forget_leases_truncated
    AFTER TRUNCATE ON campaign_metrics
    FOR EACH STATEMENT EXECUTE FUNCTION apex_metrics_forget_leases();
