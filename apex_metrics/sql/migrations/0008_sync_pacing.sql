-- 0008_sync_pacing: the Dataverse budget shared by every sync engine process, and the rows
-- whose 204 answer does not say created or updated.
--
-- Dataverse's service protection limits count per application user (and web server), not per
-- process: N engine processes that each paced alone would spend N times the budget. They share
-- it here. A slot stands for one second of server execution per second (there are
-- x-ms-dop-hint of them); a request runs in a slot, and after it the slot rests (free_at) so
-- that the slots together stay just under the execution and request budgets
-- (apex_metrics/dataverse/pacing.py). A holder that dies frees its slot at held_until.
-- A 429 pauses every process until paused_until.

CREATE TABLE sync_slots (
    slot integer PRIMARY KEY,
    owner text,  -- the process holding it; NULL when free
    held_until timestamptz,  -- a holder that died gives it up then
    free_at timestamptz NOT NULL DEFAULT 'epoch'  -- resting until then
);

CREATE TABLE sync_pacing (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),  -- one row
    paused_until timestamptz NOT NULL DEFAULT 'epoch'
);

INSERT INTO sync_pacing DEFAULT VALUES;

-- UpsertMultiple (and upserts without return=representation) answer 204: delivered, but not
-- said whether created or updated.
ALTER TABLE sync_runs ADD COLUMN upserted integer NOT NULL DEFAULT 0;
