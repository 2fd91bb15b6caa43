-- The lean stored form (docs/architecture.md, "State").
--
-- 1. A lead's state is compact JSON text written and read by leadcycle alone (scoring.state
--    encode/decode); PostgreSQL no longer parses it on every batch. It no longer lists every
--    event the lead ever had: the event log's key says which events were applied. The one
--    fact the sweep filtered on inside the JSON becomes a column.
ALTER TABLE leads ALTER COLUMN state TYPE text USING state::text;
ALTER TABLE leads ADD COLUMN stage_touched boolean NOT NULL DEFAULT false;
UPDATE leads SET stage_touched = true
 WHERE coalesce((state::jsonb->>'stage_touched')::boolean, false);

-- 2. Ledger entries keep their decay facts as columns instead of one JSON document per row.
ALTER TABLE score_ledger
    ADD COLUMN anchor         timestamptz,
    ADD COLUMN half_life_days double precision,
    ADD COLUMN decayed_points double precision,
    ADD COLUMN score_before   double precision,
    ADD COLUMN score_after    double precision;
UPDATE score_ledger SET
    anchor         = (detail->>'anchor')::timestamptz,
    half_life_days = (detail->>'half_life_days')::float8,
    decayed_points = coalesce((detail->>'decayed_points')::float8, points),
    score_before   = coalesce((detail->>'score_before')::float8, 0),
    score_after    = coalesce((detail->>'score_after')::float8, 0);
ALTER TABLE score_ledger
    ALTER COLUMN decayed_points SET NOT NULL,
    ALTER COLUMN score_before SET NOT NULL,
    ALTER COLUMN score_after SET NOT NULL,
    DROP COLUMN detail;

ALTER TABLE score_ledger_history
    ADD COLUMN anchor         timestamptz,
    ADD COLUMN half_life_days double precision,
    ADD COLUMN decayed_points double precision,
    ADD COLUMN score_before   double precision,
    ADD COLUMN score_after    double precision;
UPDATE score_ledger_history SET
    anchor         = (detail->>'anchor')::timestamptz,
    half_life_days = (detail->>'half_life_days')::float8,
    decayed_points = coalesce((detail->>'decayed_points')::float8, points),
    score_before   = coalesce((detail->>'score_before')::float8, 0),
    score_after    = coalesce((detail->>'score_after')::float8, 0);
ALTER TABLE score_ledger_history
    ALTER COLUMN decayed_points SET NOT NULL,
    ALTER COLUMN score_before SET NOT NULL,
    ALTER COLUMN score_after SET NOT NULL,
    DROP COLUMN detail;

-- 3. The lead an email-only `identify` (or a signed `unsubscribe`) was applied to: the worker
--    looked it up by email at the time, which the event itself does not say; `leadcycle replay`
--    sends the event to the same lead. (Rows logged before this migration: see
--    infra/replaystore.py `identify_assignments`.)
ALTER TABLE event_log ADD COLUMN resolved_to text;

-- 4. One lead per person (docs/architecture.md, "Identity"): a lead made by an email-only
--    identify (`email:<address>`) is merged into the CRM lead whose profile carries the same
--    email, whichever came first. The merge is recorded here; the absorbed row stays, with
--    `merged_into` set, and its history moves to the survivor.
CREATE TABLE lead_merges (
    absorbed   text PRIMARY KEY,
    survivor   text NOT NULL,
    email      text,
    event_id   text NOT NULL,      -- the event that revealed the match (source|event id)
    merged_at  timestamptz NOT NULL
);
CREATE INDEX lead_merges_survivor ON lead_merges (survivor);

-- 5. One writer per lead (docs/architecture.md, "One writer per lead"): work for a subject
--    that another worker's shard owns (a visitor's events and its identify on different
--    partitions, a merge) is forwarded to that shard here, in the forwarding batch's
--    transaction, and taken by the owner in one of its own. PostgreSQL holds it, so a broker
--    restart loses none of it.
CREATE TABLE inbox (
    seq           bigserial PRIMARY KEY,
    shard         integer NOT NULL,
    kind          text NOT NULL CHECK (kind IN ('event', 'link', 'stitch', 'claim', 'absorb')),
    subject       text NOT NULL,
    qualified_id  text,                -- the logged event it concerns (source|event id)
    body          text,                -- JSON: what a stitch, claim or absorb carries
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX inbox_shard ON inbox (shard, seq);
CREATE INDEX inbox_event ON inbox (qualified_id) WHERE qualified_id IS NOT NULL;
