-- Retention of anonymous visitors that never identify (infra/retention.py, docs/operations.md).
--
-- A purged visitor's events keep their event_log rows as the idempotency record (a redelivered
-- or replayed copy must not be applied as new), with the payload emptied and disposition
-- 'purged'. The disposition check is widened by 'purged' whatever it allows today: every
-- CHECK constraint of event_log that mentions disposition becomes "disposition = 'purged' OR
-- (what it said)", so this file does not depend on the exact list an earlier migration wrote.
DO $$
DECLARE
    c record;
BEGIN
    FOR c IN
        SELECT conname, pg_get_constraintdef(oid) AS def
          FROM pg_constraint
         WHERE conrelid = 'event_log'::regclass AND contype = 'c'
           AND pg_get_constraintdef(oid) LIKE '%disposition%'
    LOOP
        EXECUTE format('ALTER TABLE event_log DROP CONSTRAINT %I', c.conname);
        EXECUTE format(
            'ALTER TABLE event_log ADD CONSTRAINT %I CHECK (disposition = %L OR %s)',
            c.conname, 'purged', regexp_replace(regexp_replace(c.def, '^CHECK ', ''), ' NOT VALID$', ''));
    END LOOP;
END
$$;

-- The sweep walks unmerged anonymous visitors in lead_id order, a bounded slice per sweep;
-- this index holds only them (a few dozen bytes a visitor, gone when it is merged or purged).
CREATE INDEX leads_anonymous_visitors ON leads (lead_id) WHERE anonymous AND merged_into IS NULL;

-- Where the next slice starts ('' = the beginning); one row, updated under the sweep lock.
CREATE TABLE retention_cursor (
    id     integer PRIMARY KEY CHECK (id = 1),
    after  text NOT NULL
);
INSERT INTO retention_cursor VALUES (1, '');
