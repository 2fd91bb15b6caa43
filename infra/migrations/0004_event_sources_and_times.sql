-- Idempotency keys by source, and event times leadcycle can trust (issue 10, points 3 and 5).
--
-- An event_id is unique only within its source: the topic (events/profiles/outcomes) or, for
-- an event the HTTP collector stamped, the collector site (`http:<site>`). The log is keyed by
-- (source, event_id), so one producer's id never swallows another producer's message.
-- Inside, an event is known by `qualified_id` (`<source>|<event_id>`): the scoring core's
-- applied set, ledger entry ids and stage history use it. Rows logged before this migration
-- keep their bare event_id there: that is the id their leads' applied sets and ledger hold,
-- and a redelivery of such a message is still recognised, by (topic, event_id).
ALTER TABLE event_log RENAME COLUMN source TO position;  -- topic/partition/offset read from
ALTER TABLE event_log
    ADD COLUMN source             text,
    ADD COLUMN site               text,         -- collector site of the write key; NULL: Kafka
    ADD COLUMN qualified_id       text,
    -- occurred_at as the producer stated it, when it was too far ahead of the receive time
    -- and `occurred_at` holds the time the event was scored at instead; NULL: unchanged.
    ADD COLUMN stated_occurred_at timestamptz;
UPDATE event_log SET source = topic, qualified_id = event_id;
-- Events logged with a clock more than 5 minutes (LEADCYCLE_MAX_FUTURE_SKEW's default) ahead of
-- when they were logged get the time the worker now scores such events at: `leadcycle replay`
-- then re-anchors the leads a skewed clock froze (docs/operations.md, "Event time").
UPDATE event_log SET stated_occurred_at = occurred_at, occurred_at = received_at
 WHERE occurred_at > received_at + interval '5 minutes';
ALTER TABLE event_log
    ALTER COLUMN source SET NOT NULL,
    ALTER COLUMN qualified_id SET NOT NULL,
    DROP CONSTRAINT event_log_pkey,
    -- event_id first: the more selective column, and lookups by a producer's id use it.
    ADD PRIMARY KEY (event_id, source);
