-- 0010_sync_doorbell: writers NOTIFY only while a sync engine sleeps (issue 16).
--
-- A transaction that sent a NOTIFY holds a database-wide lock from the start of its commit to
-- its end (PostgreSQL queues notifications in commit order), WAL flush included: concurrent
-- writers that each notified committed one at a time. A notification is only a hint (polling
-- guarantees progress), and only a sleeping engine needs one: an engine at work claims again
-- after every batch. So:
--
-- sync_processes.asleep_since  set by an engine process when a worker found nothing to claim
--                              ("the doorbell is armed"), cleared when a claim comes back full
--                              (work is arriving faster than one batch: nobody sleeps) and on
--                              a clean stop (the row goes).
-- apex_metrics_notify_pending  every write statement that made rows pending takes the shared
--                              advisory lock "apexbell" (held to its commit; nobody ever takes
--                              it exclusively, so it never waits), then NOTIFYs only if some
--                              live process is asleep.
--
-- The fence: after arming, the engine waits (reading pg_locks, not locking) until every
-- transaction that held "apexbell" when the doorbell was armed has ended, then claims once more.
-- A writer either held the lock by then (it has committed: the claim sees its rows) or took it
-- later and read the doorbell armed (it notifies). A REPEATABLE READ writer may have read the
-- flag before it was armed: its rows wait for the next poll at most.
--
-- A process that dies armed leaves the flag set: writers then notify for nothing (correct,
-- only slower) until an engine prunes the flag of processes silent for 10 minutes.

ALTER TABLE sync_processes ADD COLUMN IF NOT EXISTS asleep_since timestamptz;

CREATE OR REPLACE FUNCTION apex_metrics_notify_pending() RETURNS trigger
LANGUAGE plpgsql SET jit = off AS $$
DECLARE
    ids bigint[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(id) INTO ids
        FROM (SELECT id FROM apex_new_rows WHERE exported_version < version LIMIT 301) s;
    ELSE
        SELECT array_agg(id) INTO ids
        FROM (
            SELECT n.id FROM apex_new_rows n JOIN apex_old_rows o ON o.id = n.id
            WHERE n.version > o.version AND n.exported_version < n.version LIMIT 301
        ) s;
    END IF;
    IF ids IS NULL THEN
        RETURN NULL;
    END IF;
    -- Rows became pending: ring only if an engine sleeps (the lock lets it fence this writer).
    PERFORM pg_advisory_xact_lock_shared(7021223386791898220);  -- "apexbell"
    IF NOT EXISTS (SELECT 1 FROM sync_processes WHERE asleep_since IS NOT NULL) THEN
        RETURN NULL;
    ELSIF cardinality(ids) > 300 THEN
        PERFORM pg_notify('apex_metrics_pending', '{"more": true}');
    ELSE
        PERFORM pg_notify('apex_metrics_pending', json_build_object('ids', ids)::text);
    END IF;
    RETURN NULL;
END
$$;
