-- Ledger entries a replay (`leadcycle replay`) replaced, kept for audit. `score_ledger` holds
-- exactly the entries that explain each lead's current scores (`leadcycle lead` checks that);
-- its key, `<lead>:<event>:<rule>`, is the same under every rule-set version, so the rows a
-- replay supersedes move here instead, with when and by which version they were replaced.
CREATE TABLE score_ledger_history (
    history_id     bigserial PRIMARY KEY,
    entry_id       text NOT NULL,
    lead_id        text NOT NULL,
    event_id       text NOT NULL,
    rule_id        text NOT NULL,
    rules_version  text NOT NULL,
    kind           text NOT NULL,
    occurred_at    timestamptz NOT NULL,
    raw_points     double precision NOT NULL,
    points         double precision NOT NULL,
    detail         jsonb NOT NULL,
    recorded_at    timestamptz NOT NULL,
    superseded_at  timestamptz NOT NULL,
    superseded_by  text NOT NULL                -- rules version of the replay that replaced it
);
CREATE INDEX score_ledger_history_lead ON score_ledger_history (lead_id, occurred_at);
