-- The sync engine's doorbell (0010_sync_doorbell.sql): writers NOTIFY only while a process
-- sleeps. Read by apex_metrics.sync.doorbell.

-- name: arm
-- This process sleeps: writers ring from now on. Nothing when its row is not there yet (the
-- first heartbeat inserts it).
UPDATE sync_processes SET asleep_since = clock_timestamp()
WHERE id = %(id)s
RETURNING 1;

-- name: disarm
-- This process is at work: it claims again after every batch, no ring needed.
UPDATE sync_processes SET asleep_since = NULL WHERE id = %(id)s AND asleep_since IS NOT NULL;

-- name: writers_in_flight
-- The transactions holding "apexbell" now (writers that may have read the doorbell unarmed).
SELECT coalesce(array_agg(virtualtransaction), '{}')
FROM pg_locks
WHERE locktype = 'advisory' AND classid = 1634755960 AND objid = 1650814060 AND objsubid = 1
  AND granted AND pid <> pg_backend_pid();

-- name: still_in_flight
-- How many of those transactions have not ended yet.
SELECT count(*)
FROM pg_locks
WHERE locktype = 'advisory' AND classid = 1634755960 AND objid = 1650814060 AND objsubid = 1
  AND virtualtransaction = ANY (%(vxids)s);

-- name: prune
-- Processes silent for 10 minutes (killed while asleep) stop making writers ring.
UPDATE sync_processes SET asleep_since = NULL
WHERE asleep_since IS NOT NULL AND heartbeat_at < clock_timestamp() - interval '10 minutes';
