"""The scoring step of a batch: resolve who each event is about, fold the pure core's decisions
into lead state, and write state, ledger, stages, recycle pool and follow-ups in the batch's
transaction. Publishing happens later, from the outbox.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

import asyncpg

from events import BehaviourTracked, FollowupChanged, NurtureEnrolled, ScoreChanged, TopicNames
from events.decode import InputEvent
from events.outputs import ScoreEntry
from infra import leadstore
from infra.leadstore import FollowupRow, LeadRow, LedgerRow, PoolRow, TransitionRow
from infra.store import OutboxRecord
from scoring.assignment import assign
from scoring.decision import Decision, FollowupDecision
from scoring.engine import apply, stitch, sweep
from scoring.intake import admitted
from scoring.ledger import LedgerEntry
from scoring.rules import RuleSet
from scoring.scores import behaviour_score, weigh
from scoring.state import ANON_PREFIX, LeadState
from scoring.trust import vouched

log = logging.getLogger("leadcycle.leads")


@dataclass(frozen=True)
class Assignment:
    """Reps taking new follow-ups (round robin) and how many each takes per day."""

    reps: tuple[str, ...] = ()
    daily_capacity: int = 20


@dataclass
class _Touched:
    """Everything decided for one lead in this batch, in order."""

    state: LeadState
    merged_into: str | None = None
    decisions: list[Decision] = field(default_factory=list)
    #: The row version (``xmin``) the state was read at; None: no row yet.
    version: str | None = None


@dataclass
class _Pass:
    """One scoring pass over (some of) a batch's events."""

    touched: dict[str, _Touched]
    #: ``(event index, (anonymous id, lead id, event id, at))`` of identity links made.
    new_links: list[tuple[int, tuple[str, str, str, datetime]]] = field(default_factory=list)
    #: event index -> the subjects it read or changed.
    keys: dict[int, set[str]] = field(default_factory=dict)


#: How often a contained re-score may grow its group before the whole batch is scored again.
MAX_REGROUPS = 4


class _Wider(Exception):
    """A contained re-score kept needing more subjects: score the whole batch again."""


class _Outside(Exception):
    """A contained re-score needs the state of ``key``, which its group does not hold."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


class _Groups:
    """Union-find over subjects: subjects one event touches belong together."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, key: str) -> str:
        root = self.parent.setdefault(key, key)
        while root != self.parent[root]:
            root = self.parent[root]
        while key != root:  # path compression
            self.parent[key], key = root, self.parent[key]
        return root

    def join(self, keys: Iterable[str]) -> None:
        roots = [self.find(k) for k in keys]
        for other in roots[1:]:
            self.parent[other] = roots[0]


class LeadProcessor:
    """Applies a batch's new events (or a sweep) to lead state in one transaction."""

    def __init__(self, rules: RuleSet, topics: TopicNames, assignment: Assignment) -> None:
        self.rules = rules
        self.topics = topics
        self.assignment = assignment
        self.tz = ZoneInfo(rules.calendar.timezone)

    async def apply_events(
        self, conn: asyncpg.Connection, events: Sequence[InputEvent], now: datetime
    ) -> list[OutboxRecord]:
        """Apply a batch's new events to lead state.

        Optimistically: the batch is scored from a plain read, then its subjects are locked
        (advisory, in one global order, and ``FOR UPDATE``) and their row versions checked.
        Subjects whose rows another worker changed in between are scored again, locked, with
        every subject connected to them through this batch's events (an identify joins a
        visitor and a lead); anything less contained is scored again whole. So the subject
        locks are held for the writes, not for the scoring, and a second worker sharing a
        few subjects (a visitor's events and its lead's arrive on different partitions) costs
        a few leads scored twice instead of a whole batch waiting.
        """
        if not events:
            return []
        # Within a batch, apply in event-time order (stable: arrival order breaks ties). Kafka
        # orders only within a partition; event time is the better order across topics.
        events = sorted(events, key=lambda e: e.occurred_at)
        seen = await self._identities(conn, events)
        run = await self._score(conn, events, range(len(events)), seen, now, lock=False)
        versions = await leadstore.lock_versions(conn, run.touched)
        changed = {k for k, t in run.touched.items() if t.version != versions.get(k)}
        if changed:
            fresh = await self._identities(conn, events)
            try:
                run = await self._rescore(conn, events, (seen, fresh), run, changed, now)
                log.info("re-scored %d subjects another worker changed meanwhile", len(changed))
            except _Wider:
                log.info("re-scoring the whole batch, locked (%d subjects changed)", len(changed))
                run = await self._score(conn, events, range(len(events)), fresh, now, lock=True)
        await leadstore.link_identities(conn, [link for _, link in run.new_links])
        return await self._persist(conn, run.touched, now)

    async def _identities(
        self, conn: asyncpg.Connection, events: Sequence[InputEvent]
    ) -> tuple[dict[str, str], dict[str, str]]:
        """Known anonymous-id links and leads by email, for this batch's events."""
        behaviour = [e for e in events if isinstance(e, BehaviourTracked)]
        links = await leadstore.identity_links(
            conn, [e.anonymous_id for e in behaviour if e.anonymous_id and not e.lead_id]
        )
        by_email = await leadstore.leads_by_email(
            conn, [e.email for e in behaviour if _by_email(e) and e.email]
        )
        return links, by_email

    async def _score(
        self,
        conn: asyncpg.Connection,
        events: Sequence[InputEvent],
        indexes: Iterable[int],
        seen: tuple[dict[str, str], dict[str, str]],
        now: datetime,
        *,
        lock: bool,
        touched: dict[str, _Touched] | None = None,
    ) -> _Pass:
        """Apply ``events[i]`` for ``i`` in ``indexes``, in order. With ``touched`` given, only
        those states may be used (a contained re-score): needing another raises ``_Outside``."""
        links, by_email = dict(seen[0]), seen[1]
        chosen = [(i, events[i]) for i in indexes]
        contained = touched is not None
        #: Emails an identify gave a lead earlier in this pass: as good as known already.
        claimed: set[str] = set()
        if touched is None:
            wanted = {self._route(e, links, by_email, claimed)[0] for _, e in chosen}
            for _, e in chosen:
                if isinstance(e, BehaviourTracked) and e.type == "identify" and e.anonymous_id:
                    # The visitor, and where an identify kept on the visitor goes.
                    wanted.add(f"{ANON_PREFIX}{e.anonymous_id}")
                    if e.anonymous_id in links:
                        wanted.add(links[e.anonymous_id])
            touched = await self._load(conn, wanted, now, lock=lock)
        run = _Pass(touched)
        for i, event in chosen:
            subject, linking = self._route(event, links, by_email, claimed)
            keys = run.keys.setdefault(i, {subject})
            if contained and subject not in touched:
                raise _Outside(subject)
            lead = await self._resolve(
                conn, touched, subject, now, lock=lock, keys=keys, contained=contained
            )
            if linking and isinstance(event, BehaviourTracked) and event.anonymous_id:
                assert event.email is not None  # an identify carries one
                claimed.add(event.email)
                anon_id = event.anonymous_id
                keys.add(f"{ANON_PREFIX}{anon_id}")
                if contained and f"{ANON_PREFIX}{anon_id}" not in touched:
                    raise _Outside(f"{ANON_PREFIX}{anon_id}")
                if anon_id not in links:
                    links[anon_id] = lead.state.lead_id
                    run.new_links.append(
                        (i, (anon_id, lead.state.lead_id, event.event_id, event.occurred_at))
                    )
                await self._stitch(conn, touched, lead, anon_id, now)
            decision = apply(lead.state, event, self.rules, now=now)
            lead.decisions.append(decision)
            lead.state = decision.state
        return run

    async def _rescore(
        self,
        conn: asyncpg.Connection,
        events: Sequence[InputEvent],
        identities: tuple[tuple[dict[str, str], dict[str, str]], ...],
        run: _Pass,
        changed: set[str],
        now: datetime,
    ) -> _Pass:
        """Score again, from fresh locked rows, the events connected to ``changed`` subjects
        (and to identity links made meanwhile), growing the group while it needs subjects it
        lacks; ``_Wider`` if it keeps growing."""
        (links, by_email), fresh = identities
        groups = _Groups()
        for keys in run.keys.values():
            groups.join(keys)
        stale_keys = set(changed)
        for i, e in enumerate(events):
            if (
                isinstance(e, BehaviourTracked)
                and not e.lead_id
                and (
                    links.get(e.anonymous_id or "") != fresh[0].get(e.anonymous_id or "")
                    or by_email.get(e.email or "") != fresh[1].get(e.email or "")
                )
            ):
                stale_keys |= run.keys[i]
        extra: set[str] = set()
        for _ in range(MAX_REGROUPS):
            stale = {groups.find(k) for k in stale_keys}
            keys = {k for k in run.touched if groups.find(k) in stale} | extra
            again = sorted(i for i, ks in run.keys.items() if groups.find(next(iter(ks))) in stale)
            states = await self._load(conn, keys, now, lock=True)
            try:
                redo = await self._score(conn, events, again, fresh, now, lock=True, touched=states)
            except _Outside as outside:
                if outside.key in run.touched:
                    stale_keys.add(outside.key)  # another group of this batch: take it too
                else:
                    extra.add(outside.key)
                continue
            redone = set(again)
            run.touched.update(redo.touched)
            run.new_links = [nl for nl in run.new_links if nl[0] not in redone] + redo.new_links
            return run
        raise _Wider

    async def sweep_leads(
        self, conn: asyncpg.Connection, lead_ids: Sequence[str], now: datetime
    ) -> list[OutboxRecord]:
        """Time rules for leads already locked by the caller (no new event)."""
        touched = await self._load(conn, set(lead_ids), now)
        for lead in touched.values():
            decision = sweep(lead.state, self.rules, now=now)
            if decision.state is not lead.state:
                lead.decisions.append(decision)
                lead.state = decision.state
        return await self._persist(conn, touched, now)

    # -- resolving subjects -------------------------------------------------------------------

    @classmethod
    def _route(
        cls,
        event: InputEvent,
        links: dict[str, str],
        by_email: dict[str, str],
        claimed: set[str],
    ) -> tuple[str, bool]:
        """The event's subject, and whether it is an identify that links its visitor to the
        lead of its email (docs/http.md, "Trust model").

        Only a vouched identify (Kafka, server key, or an email signed by the site's server)
        may link a visitor to a lead that already exists. An unsigned browser identify of a
        known email is recorded as the visitor's own event: no link, no merge of history. One
        of an email nobody has yet makes the lead, as a sign-up form would. A signed browser
        unsubscribe (a signed link) is about the lead of its email.
        """
        if not isinstance(event, BehaviourTracked):
            return cls._subject(event, links, by_email), False
        identify = event.type == "identify" and event.anonymous_id is not None
        if event.lead_id or event.email is None:
            # Naming the lead is vouching for it: browser keys cannot (the collector refuses).
            return cls._subject(event, links, by_email), identify
        if event.type == "unsubscribe" and _by_email(event):
            return by_email.get(event.email) or cls._subject(event, links, by_email), False
        if event.type != "identify":
            return cls._subject(event, links, by_email), False
        known = event.email in by_email or event.email in claimed
        if known and not vouched(event) and event.anonymous_id:
            return links.get(event.anonymous_id) or f"{ANON_PREFIX}{event.anonymous_id}", False
        return cls._subject(event, links, by_email), identify

    @staticmethod
    def _subject(event: InputEvent, links: dict[str, str], by_email: dict[str, str]) -> str:
        if not isinstance(event, BehaviourTracked):
            return event.lead_id
        if event.lead_id:
            return event.lead_id
        if event.type == "identify" and event.email:
            # No lead id from the tracker: the lead with this email, else one named by it.
            return by_email.get(event.email) or f"email:{event.email}"
        assert event.anonymous_id is not None
        return links.get(event.anonymous_id) or f"{ANON_PREFIX}{event.anonymous_id}"

    async def _load(
        self, conn: asyncpg.Connection, ids: set[str], now: datetime, *, lock: bool = True
    ) -> dict[str, _Touched]:
        found = await leadstore.load_states(conn, ids, lock=lock)
        touched = {}
        for lead_id in ids:
            if lead_id in found:
                text, merged_into, version = found[lead_id]
                touched[lead_id] = _Touched(
                    LeadState.model_validate_json(text), merged_into, version=version
                )
            else:
                touched[lead_id] = _Touched(LeadState.new(lead_id, now=now))
        return touched

    async def _resolve(
        self,
        conn: asyncpg.Connection,
        touched: dict[str, _Touched],
        subject: str,
        now: datetime,
        *,
        lock: bool = True,
        keys: set[str] | None = None,
        contained: bool = False,
    ) -> _Touched:
        """The state an event applies to; an anonymous subject merged meanwhile (by an identify
        in this batch or another worker's) forwards to its lead. ``keys`` collects the hops."""
        lead = touched[subject]
        hops = 0
        while lead.merged_into is not None and hops < 5:
            target = lead.merged_into
            if keys is not None:
                keys.add(target)
            if target not in touched:
                if contained:
                    raise _Outside(target)
                touched.update(await self._load(conn, {target}, now, lock=lock))
            lead, hops = touched[target], hops + 1
        return lead

    async def _stitch(
        self,
        conn: asyncpg.Connection,
        touched: dict[str, _Touched],
        lead: _Touched,
        anon_id: str,
        now: datetime,
    ) -> None:
        subject = f"{ANON_PREFIX}{anon_id}"
        anon = touched.get(subject)
        if anon is None or anon.merged_into is not None or lead.state.anonymous:
            return
        history = [
            admitted(BehaviourTracked.model_validate_json(p), qualified_id, at)
            for p, qualified_id, at in await leadstore.anonymous_history(conn, subject)
        ]
        decision = stitch(lead.state, anon.state, history, self.rules, now=now)
        lead.decisions.append(decision)
        lead.state = decision.state
        anon.merged_into = lead.state.lead_id
        anon.decisions.append(Decision(state=anon.state))  # the row is written, marked merged

    # -- writing ------------------------------------------------------------------------------

    async def _persist(
        self, conn: asyncpg.Connection, touched: dict[str, _Touched], now: datetime
    ) -> list[OutboxRecord]:
        changed = {k: t for k, t in touched.items() if t.decisions}
        if not changed:
            return []
        ledger: list[LedgerEntry] = []
        transitions: list[TransitionRow] = []
        out: list[OutboxRecord] = []
        for lead_id, t in changed.items():
            entries = [e for d in t.decisions for e in d.ledger]
            ledger += entries
            for d in t.decisions:
                for i, tr in enumerate(d.transitions):
                    cause = tr.event_id or f"sweep@{tr.at.isoformat()}"
                    transitions.append(
                        TransitionRow(
                            transition_id=f"{lead_id}:{cause}:{i}:{tr.to_stage}",
                            lead_id=lead_id,
                            from_stage=tr.from_stage,
                            to_stage=tr.to_stage,
                            at=tr.at,
                            reason=tr.reason,
                            event_id=tr.event_id,
                            accepted=tr.accepted,
                        )
                    )
                if d.recycle is not None:
                    out.append(self._nurture(d))
            if entries:
                out.append(self._score_message(t.state, entries, now))
        await leadstore.save_leads(conn, [self._row(t, now) for t in changed.values()])
        await leadstore.insert_ledger(conn, [LedgerRow.of(e) for e in ledger])
        await leadstore.insert_transitions(conn, transitions)
        members = [_pool_row(t.state) for t in changed.values() if t.state.stage == "recycled"]
        leaving = [k for k, t in changed.items() if t.state.stage != "recycled"]
        await leadstore.sync_recycle_pool(conn, [m for m in members if m is not None], leaving)
        out += await self._followups(conn, changed, now)
        return out

    def _row(self, t: _Touched, now: datetime) -> LeadRow:
        s, p = t.state, t.state.profile
        behaviour = behaviour_score(s, now, self.rules)
        return LeadRow(
            lead_id=s.lead_id,
            anonymous=s.anonymous,
            merged_into=t.merged_into,
            email=p.email,
            company_name=p.company_name,
            job_title=p.job_title,
            industry=p.industry,
            company_size=p.company_size,
            country=p.country,
            source=p.source,
            owner=p.owner,
            stage=s.stage,
            stage_since=s.stage_since,
            fit_score=s.fit_score,
            grade=s.fit_grade,
            behaviour_score=behaviour,
            priority=weigh(s.fit_score, behaviour, self.rules),
            scored_at=now,
            excluded=s.excluded,
            exclusion_reason=s.exclusion_reason,
            rules_version=s.rules_version or self.rules.version,
            state=s.model_dump_json(),
        )

    def _score_message(
        self, s: LeadState, entries: list[LedgerEntry], now: datetime
    ) -> OutboxRecord:
        digest = hashlib.sha256("|".join(e.entry_id for e in entries).encode()).hexdigest()[:16]
        behaviour = behaviour_score(s, now, self.rules)
        msg = ScoreChanged(
            message_id=f"{s.lead_id}:{digest}",
            lead_id=s.lead_id,
            rules_version=self.rules.version,
            scored_at=now,
            fit_score=s.fit_score,
            grade=s.fit_grade,
            behaviour_score=behaviour,
            priority=weigh(s.fit_score, behaviour, self.rules),
            stage=s.stage,
            entries=[
                ScoreEntry(
                    entry_id=e.entry_id,
                    event_id=e.event_id,
                    rule_id=e.rule_id,
                    kind=e.kind,
                    occurred_at=e.occurred_at,
                    raw_points=e.raw_points,
                    points=e.points,
                )
                for e in entries
            ],
        )
        return OutboxRecord(
            self.topics.score_changes, s.lead_id.encode(), msg.model_dump_json().encode()
        )

    def _nurture(self, d: Decision) -> OutboxRecord:
        r = d.recycle
        assert r is not None
        msg = NurtureEnrolled(
            message_id=f"{r.lead_id}:{r.since.isoformat()}",
            lead_id=r.lead_id,
            reason=r.reason,
            track=r.track,
            recycled_at=r.since,
            revisit_on=r.revisit_on,
        )
        return OutboxRecord(self.topics.nurture, r.lead_id.encode(), msg.model_dump_json().encode())

    async def _followups(
        self, conn: asyncpg.Connection, changed: dict[str, _Touched], now: datetime
    ) -> list[OutboxRecord]:
        relevant = {
            k: t
            for k, t in changed.items()
            if any(d.followup or d.close_followup or d.excluded for d in t.decisions)
        }
        if not relevant:
            return []
        current = await leadstore.open_followups(conn, relevant)
        saved: dict[str, FollowupRow] = {}
        new_rows: list[FollowupRow] = []
        for lead_id, t in relevant.items():
            open_row = current.get(lead_id)
            for d in t.decisions:
                if open_row is not None and (d.close_followup or d.excluded):
                    reason = "lead excluded" if d.excluded else "sales outcome recorded"
                    if d.state.stage == "recycled":
                        reason = "lead recycled"
                    _bump(open_row, now, status="done", closed_at=now, closed_reason=reason)
                    saved[open_row.followup_id] = open_row
                    open_row = None
                if d.followup is not None and not d.excluded:
                    if open_row is None:
                        open_row = _new_followup(d.followup, now)
                        new_rows.append(open_row)
                    else:
                        _bump(
                            open_row,
                            now,
                            why_now=d.followup.why_now,
                            priority=d.followup.priority,
                            due_at=min(open_row.due_at, d.followup.due_at),
                            context=_context_json(d.followup),
                        )
                    saved[open_row.followup_id] = open_row
        await self._assign(conn, [r for r in new_rows if r.followup_id in saved], changed, now)
        rows = list(saved.values())
        await leadstore.save_followups(conn, rows)
        return [self.followup_message(r) for r in rows]

    async def _assign(
        self,
        conn: asyncpg.Connection,
        rows: list[FollowupRow],
        changed: dict[str, _Touched],
        now: datetime,
    ) -> None:
        if not rows:
            return
        day = now.astimezone(self.tz).date()
        loads = await leadstore.rep_loads(conn, day)
        cursor = await leadstore.take_cursor(conn) if self.assignment.reps else 0
        added: dict[str, int] = defaultdict(int)
        for row in sorted(rows, key=lambda r: r.lead_id):
            owner = changed[row.lead_id].state.profile.owner
            current = {r: loads.get(r, 0) + added[r] for r in self.assignment.reps}
            row.assignee, cursor = assign(
                owner, self.assignment.reps, current, self.assignment.daily_capacity, cursor=cursor
            )
            if row.assignee is not None and row.assignee in self.assignment.reps and not owner:
                added[row.assignee] += 1
        await leadstore.add_rep_load(conn, day, dict(added))
        if self.assignment.reps:
            await leadstore.put_cursor(conn, cursor)

    def followup_message(self, r: FollowupRow) -> OutboxRecord:
        msg = FollowupChanged(
            message_id=f"{r.followup_id}:v{r.version}",
            followup_id=r.followup_id,
            version=r.version,
            lead_id=r.lead_id,
            status=r.status,
            why_now=r.why_now,
            priority=r.priority,
            due_at=r.due_at,
            assignee=r.assignee,
            sla_breached=r.sla_breached,
            context=json.loads(r.context),
        )
        return OutboxRecord(
            self.topics.followups, r.lead_id.encode(), msg.model_dump_json().encode()
        )


def _by_email(event: BehaviourTracked) -> bool:
    """Whether the event's subject is looked up by its email: an identify without a lead id,
    or a browser unsubscribe whose email the site's server signed (a signed link)."""
    if event.lead_id or event.email is None:
        return False
    if event.type == "identify":
        return True
    return (
        event.type == "unsubscribe"
        and event.collected is not None
        and event.collected.email_verified
    )


def _context_json(f: FollowupDecision) -> str:
    ctx = f.context.model_dump(mode="json")
    ctx["recent_activities"] = [
        f"{a['type']}: {a['label']}" if a.get("label") else a["type"]
        for a in ctx.get("recent_activities", [])
    ]
    ctx["reason"] = f.reason
    return json.dumps(ctx, ensure_ascii=False)


def _new_followup(f: FollowupDecision, now: datetime) -> FollowupRow:
    fid = uuid.uuid5(uuid.NAMESPACE_URL, f"leadcycle:{f.lead_id}:{f.created_at.isoformat()}")
    return FollowupRow(
        followup_id=f"fu-{fid.hex[:20]}",
        lead_id=f.lead_id,
        status="open",
        why_now=f.why_now,
        priority=f.priority,
        due_at=f.due_at,
        assignee=None,
        sla_breached=False,
        context=_context_json(f),
        version=1,
        created_at=now,
        updated_at=now,
        closed_at=None,
        closed_reason=None,
    )


def _bump(row: FollowupRow, now: datetime, **changes: object) -> None:
    for key, value in changes.items():
        setattr(row, key, value)
    row.version += 1
    row.updated_at = now


def _pool_row(s: LeadState) -> PoolRow | None:
    r = s.recycle
    if r is None:
        return None
    return PoolRow(
        lead_id=s.lead_id,
        reason=r.reason,
        since=r.since,
        revisit_on=r.revisit_on,
        track=r.track,
        requeued_at=s.last_requeue_at,
    )
