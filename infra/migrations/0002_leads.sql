-- Lead state: the system of record for everything the scoring core decides.
-- `state` is the full scoring.LeadState (JSON) the worker loads and saves per batch; the other
-- columns are projections of it for queries, call lists and reports.
CREATE TABLE leads (
    lead_id          text PRIMARY KEY,          -- CRM lead id, or anon:<anonymous_id>
    anonymous        boolean NOT NULL DEFAULT false,
    merged_into      text,                      -- an anonymous subject merged into this lead
    email            text,
    company_name     text,
    job_title        text,
    industry         text,
    company_size     integer,
    country          text,
    source           text,
    owner            text,
    stage            text NOT NULL,
    stage_since      timestamptz NOT NULL,
    fit_score        double precision NOT NULL DEFAULT 0,
    grade            text,
    behaviour_score  double precision NOT NULL DEFAULT 0,  -- decayed to scored_at
    priority         double precision NOT NULL DEFAULT 0,  -- at scored_at
    scored_at        timestamptz NOT NULL,                 -- decay reference of the two above
    excluded         boolean NOT NULL DEFAULT false,
    exclusion_reason text,
    rules_version    text NOT NULL,
    state            jsonb NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX leads_stage ON leads (stage);
CREATE INDEX leads_email ON leads (email) WHERE email IS NOT NULL;

-- Which anonymous visitor became which lead (from identify events).
CREATE TABLE identity_links (
    anonymous_id  text PRIMARY KEY,
    lead_id       text NOT NULL,
    event_id      text NOT NULL,
    linked_at     timestamptz NOT NULL
);
CREATE INDEX identity_links_lead ON identity_links (lead_id);

-- Explainability: every point, which event, which rule, which rule-set version.
CREATE TABLE score_ledger (
    entry_id       text PRIMARY KEY,            -- deterministic: replays insert nothing new
    lead_id        text NOT NULL,
    event_id       text NOT NULL,
    rule_id        text NOT NULL,
    rules_version  text NOT NULL,
    kind           text NOT NULL CHECK (kind IN ('fit', 'behaviour')),
    occurred_at    timestamptz NOT NULL,
    raw_points     double precision NOT NULL,
    points         double precision NOT NULL,   -- credited, after caps
    detail         jsonb NOT NULL,              -- decay anchor, half-life, score before/after
    recorded_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX score_ledger_lead ON score_ledger (lead_id, occurred_at);

-- Stage history, for funnel and dwell-time reports. Gate-blocked moves are kept (accepted=false).
CREATE TABLE stage_transitions (
    transition_id  text PRIMARY KEY,            -- deterministic from lead, cause and target
    lead_id        text NOT NULL,
    from_stage     text NOT NULL,
    to_stage       text NOT NULL,
    at             timestamptz NOT NULL,
    reason         text,
    event_id       text,                        -- null for sweep decisions
    accepted       boolean NOT NULL,
    recorded_at    timestamptz NOT NULL DEFAULT clock_timestamp()  -- the order decisions were made
);
CREATE INDEX stage_transitions_lead ON stage_transitions (lead_id, at);

-- The recycle pool: leads lost or stalled, by reason, with their nurture track.
CREATE TABLE recycle_pool (
    lead_id      text PRIMARY KEY,
    reason       text NOT NULL,
    since        timestamptz NOT NULL,
    revisit_on   date,
    track        text NOT NULL,
    requeued_at  timestamptz                    -- last time it went back to a call list
);
CREATE INDEX recycle_pool_revisit ON recycle_pool (revisit_on) WHERE revisit_on IS NOT NULL;

-- Call lists: at most one open follow-up per lead.
CREATE TABLE followups (
    followup_id   text PRIMARY KEY,
    lead_id       text NOT NULL,
    status        text NOT NULL CHECK (status IN ('open', 'done', 'expired')),
    why_now       text NOT NULL,
    priority      double precision NOT NULL,
    due_at        timestamptz NOT NULL,
    assignee      text,
    sla_breached  boolean NOT NULL DEFAULT false,
    context       jsonb NOT NULL,
    version       integer NOT NULL DEFAULT 1,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    closed_at     timestamptz,
    closed_reason text
);
CREATE UNIQUE INDEX followups_one_open ON followups (lead_id) WHERE status = 'open';
CREATE INDEX followups_open_due ON followups (due_at, priority DESC) WHERE status = 'open';
CREATE INDEX followups_assignee ON followups (assignee, due_at) WHERE status = 'open';

-- Round-robin assignment: follow-ups assigned per rep per day (capacity), and the rotation.
CREATE TABLE rep_load (
    rep       text NOT NULL,
    day       date NOT NULL,
    assigned  integer NOT NULL DEFAULT 0,
    PRIMARY KEY (rep, day)
);
CREATE TABLE assignment_cursor (
    id      integer PRIMARY KEY CHECK (id = 1),
    cursor  integer NOT NULL
);
INSERT INTO assignment_cursor VALUES (1, 0);
