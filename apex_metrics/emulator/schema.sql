-- The emulator's own bookkeeping tables (per-table row tables are created at run time).
CREATE TABLE IF NOT EXISTS emu_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS emu_entities (
    logical_name TEXT PRIMARY KEY,
    definition TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS emu_deleted (
    entity TEXT NOT NULL,
    id TEXT NOT NULL,
    versionnumber INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS emu_deleted_entity_version ON emu_deleted (entity, versionnumber);
CREATE TABLE IF NOT EXISTS emu_audit (
    auditid TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    objecttypecode TEXT NOT NULL,
    objectid TEXT NOT NULL,
    action INTEGER NOT NULL,
    operation INTEGER NOT NULL,
    userid TEXT NOT NULL,
    createdon TEXT NOT NULL,
    changedata TEXT NOT NULL
);
-- A row's history ($filter=_objectid_value eq ...). An older file's index led with the table
-- name, which that filter does not give, so it was never used: dropped.
DROP INDEX IF EXISTS emu_audit_object;
CREATE INDEX IF NOT EXISTS emu_audit_row ON emu_audit (objectid);
-- The lists of columns that compact changedata refers to (see changedata.py).
CREATE TABLE IF NOT EXISTS emu_audit_plans (
    id INTEGER PRIMARY KEY,
    entity TEXT NOT NULL,
    names TEXT NOT NULL
);
-- Audit rows as the Web API's ``audits`` entity set shows them (changedata rendered by the
-- emulator's SQLite function; re-created at every start, so older files get it too).
DROP VIEW IF EXISTS e_audit;
CREATE VIEW e_audit AS
SELECT auditid, seq AS versionnumber, objectid AS _objectid_value, objecttypecode, action, operation,
       userid AS _userid_value, createdon, emu_changedata(changedata) AS changedata
FROM emu_audit;
