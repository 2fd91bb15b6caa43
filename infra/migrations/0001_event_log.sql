-- The inbox: every accepted input event, once. Its primary key is the idempotency key, so a
-- redelivered or duplicated event is recognised in the same transaction that would apply it.
-- It is also the retained event log that replays and identity stitching read.
CREATE TABLE event_log (
    event_id      text PRIMARY KEY,
    topic         text NOT NULL CHECK (topic IN ('events', 'profiles', 'outcomes')),
    type          text NOT NULL,
    subject       text NOT NULL,           -- lead id, or anon:<anonymous_id> before identify
    lead_id       text,
    anonymous_id  text,
    occurred_at   timestamptz NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now(),
    disposition   text NOT NULL DEFAULT 'accepted' CHECK (disposition IN ('accepted', 'bot')),
    source        text,                    -- topic/partition/offset it was read from
    payload       jsonb NOT NULL
);
CREATE INDEX event_log_subject ON event_log (subject, occurred_at);
CREATE INDEX event_log_anonymous ON event_log (anonymous_id) WHERE anonymous_id IS NOT NULL;

-- Rejected input, also published to the dead-letter topic. Keyed by source position, so a
-- replayed batch does not count a bad message twice.
CREATE TABLE dead_letters (
    message_id    text PRIMARY KEY,        -- topic:partition:offset:sha256 prefix
    source_topic  text NOT NULL,
    partition     integer NOT NULL,
    "offset"      bigint NOT NULL,
    reason        text NOT NULL,
    error         text NOT NULL,
    payload_size  integer NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dead_letters_reason ON dead_letters (reason);

-- Transactional outbox: output messages are written in the batch's transaction and published
-- after it commits; a crash in between leaves them here for the relay (at-least-once output).
CREATE TABLE outbox (
    id          bigserial PRIMARY KEY,
    topic       text NOT NULL,
    key         bytea,
    value       bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
