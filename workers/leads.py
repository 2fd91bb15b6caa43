"""The scoring step of a batch: resolve who each event is about, fold the pure core's decisions
into lead state, and write state, ledger, stages, recycle pool and follow-ups in the batch's
transaction. Publishing happens later, from the outbox.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

import asyncpg

from events import BehaviourTracked, ProfileUpdated, TopicNames
from events.decode import InputEvent
from infra import leadstore
from infra.leadstore import LeadRow, PoolRow, TransitionRow
from infra.store import OutboxRecord
from scoring.assignment import assign
from scoring.decision import Decision
from scoring.desk import Followup, needs_desk, settle
from scoring.engine import apply, stitch, sweep
from scoring.intake import admitted, split
from scoring.ledger import LedgerEntry
from scoring.merge import EMAIL_PREFIX, is_crm_lead, merge
from scoring.rules import RuleSet
from scoring.scores import behaviour_score, weigh
from scoring.state import ANON_PREFIX, LeadState, decode_state
from workers.outputs import Outputs
from workers.statecache import StateCache
from workers.subjects import by_email_lookup, route

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
    #: ``anon:<id>`` -> the behaviour this pass applied to that visitor (its history so far in
    #: this batch: the event log already holds these rows, but a stitch must not take events
    #: the pass has yet to apply).
    here: dict[str, list[BehaviourTracked]] = field(default_factory=lambda: defaultdict(list))
    #: ``(event index, (qualified event id, lead))`` of email-only events applied to a lead.
    resolved: list[tuple[int, tuple[str, str]]] = field(default_factory=list)
    #: ``(event index, (absorbed, survivor, email, event id))`` of the merges made.
    merges: list[tuple[int, tuple[str, str, str, str]]] = field(default_factory=list)


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

    def __init__(
        self,
        rules: RuleSet,
        topics: TopicNames,
        assignment: Assignment,
        *,
        cache_size: int = 0,
    ) -> None:
        self.rules = rules
        self.topics = topics
        self.assignment = assignment
        self.tz = ZoneInfo(rules.calendar.timezone)
        self.outputs = Outputs(topics)
        self.cache = StateCache(cache_size)
        #: States written by the batch in flight, for the cache once it commits.
        self._written: dict[str, tuple[str, LeadState]] = {}

    def committed(self) -> None:
        """The batch's transaction committed: its states are the rows' current versions."""
        self.cache.put(self._written)
        self._written = {}

    def aborted(self) -> None:
        """The batch's transaction rolled back: forget what it wrote."""
        self._written = {}

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
        await leadstore.record_resolutions(
            conn, [(*_source_and_id(qid), lead) for _, (qid, lead) in run.resolved]
        )
        out = await self._persist(conn, run.touched, now)
        merges = [m for _, m in run.merges]
        if merges:
            await leadstore.record_merges(conn, merges, now)
            out += [self.outputs.merged(*m, at=now) for m in merges]
        return out

    async def _identities(
        self, conn: asyncpg.Connection, events: Sequence[InputEvent]
    ) -> tuple[dict[str, str], dict[str, str]]:
        """Known anonymous-id links and leads by email, for this batch's events."""
        behaviour = [e for e in events if isinstance(e, BehaviourTracked)]
        links = await leadstore.identity_links(
            conn, [e.anonymous_id for e in behaviour if e.anonymous_id and not e.lead_id]
        )
        by_email = await leadstore.leads_by_email(
            conn, [e.email for e in behaviour if by_email_lookup(e) and e.email]
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
        links, by_email = dict(seen[0]), dict(seen[1])
        chosen = [(i, events[i]) for i in indexes]
        contained = touched is not None
        #: Emails an identify gave a lead earlier in this pass: as good as known already.
        claimed: set[str] = set()
        if touched is None:
            wanted = {route(e, links, by_email, claimed)[0] for _, e in chosen}
            for _, e in chosen:
                if isinstance(e, BehaviourTracked) and e.type == "identify" and e.anonymous_id:
                    # The visitor, and where an identify kept on the visitor goes.
                    wanted.add(f"{ANON_PREFIX}{e.anonymous_id}")
                    if e.anonymous_id in links:
                        wanted.add(links[e.anonymous_id])
                if isinstance(e, ProfileUpdated) and e.email and is_crm_lead(e.lead_id):
                    wanted.add(f"{EMAIL_PREFIX}{e.email}")  # the same person, if it exists
            touched = await self._load(conn, wanted, now, lock=lock)
        run = _Pass(touched)
        histories = await self._histories(conn, events, chosen, touched)
        for i, event in chosen:
            subject, linking = route(event, links, by_email, claimed)
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
                self._stitch(touched, lead, anon_id, histories, run, now)
            decision = apply(lead.state, event, self.rules, now=now)
            lead.decisions.append(decision)
            if isinstance(event, ProfileUpdated) and event.email:
                self._claim(i, lead, event, by_email, run, keys, contained=contained, now=now)
            if isinstance(event, BehaviourTracked):
                if lead.state.anonymous:
                    run.here[lead.state.lead_id].append(event)
                elif by_email_lookup(event):
                    run.resolved.append((i, (event.event_id, lead.state.lead_id)))
        return run

    def _claim(
        self,
        i: int,
        lead: _Touched,
        event: ProfileUpdated,
        by_email: dict[str, str],
        run: _Pass,
        keys: set[str],
        *,
        contained: bool,
        now: datetime,
    ) -> None:
        """A CRM lead's profile holds an email: an email lead of that address is the same
        person and is merged into it; another CRM lead with it is a duplicate (kept apart,
        reported: ``leadcycle duplicates``)."""
        survivor, email = lead.state.lead_id, lead.state.profile.email
        if email is None or not is_crm_lead(survivor):
            return
        holder = by_email.get(email)
        if holder is not None and holder != survivor and is_crm_lead(holder):
            log.warning("leads %s and %s share the email %s: duplicates", holder, survivor, email)
            return
        by_email[email] = survivor  # later identifies of this email in the batch come here
        absorbed = f"{EMAIL_PREFIX}{email}"
        keys.add(absorbed)
        if contained and absorbed not in run.touched:
            raise _Outside(absorbed)
        other = run.touched.get(absorbed)
        if other is None or other.merged_into is not None:
            return
        if other.version is None and not other.decisions:
            return  # no such lead: nothing to merge
        lead.decisions.append(merge(lead.state, other.state, self.rules, now=now))
        other.merged_into = survivor
        other.decisions.append(
            Decision(
                state=other.state,
                changed=True,
                close_followup=True,
                closed_reason=f"merged into {survivor}",
            )
        )
        run.merges.append((i, (absorbed, survivor, email, event.event_id)))

    async def _histories(
        self,
        conn: asyncpg.Connection,
        events: Sequence[InputEvent],
        chosen: Sequence[tuple[int, InputEvent]],
        touched: dict[str, _Touched],
    ) -> dict[str, list[BehaviourTracked]]:
        """The logged history of every visitor an identify of this pass may stitch, in one
        query: visitors with a state not merged yet. The batch's own events are left out (the
        pass adds those it applied to the visitor before the identify)."""
        subjects = set()
        for _, e in chosen:
            if isinstance(e, BehaviourTracked) and e.type == "identify" and e.anonymous_id:
                anon = touched.get(f"{ANON_PREFIX}{e.anonymous_id}")
                if anon is not None and anon.version is not None and anon.merged_into is None:
                    subjects.add(anon.state.lead_id)
        if not subjects:
            return {}
        batch = {e.event_id for e in events}
        return {
            subject: [
                admitted(BehaviourTracked.model_validate_json(p), qualified_id, at)
                for p, qualified_id, at in rows
                if qualified_id not in batch
            ]
            for subject, rows in (await leadstore.anonymous_histories(conn, subjects)).items()
        }

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
            run.resolved = [r for r in run.resolved if r[0] not in redone] + redo.resolved
            run.merges = [m for m in run.merges if m[0] not in redone] + redo.merges
            return run
        raise _Wider

    async def sweep_leads(
        self, conn: asyncpg.Connection, lead_ids: Sequence[str], now: datetime
    ) -> list[OutboxRecord]:
        """Time rules for leads already locked by the caller (no new event)."""
        touched = await self._load(conn, set(lead_ids), now)
        for lead in touched.values():
            decision = sweep(lead.state, self.rules, now=now)
            if decision.changed:
                lead.decisions.append(decision)
        return await self._persist(conn, touched, now)

    # -- resolving subjects -------------------------------------------------------------------

    async def _load(
        self, conn: asyncpg.Connection, ids: set[str], now: datetime, *, lock: bool = True
    ) -> dict[str, _Touched]:
        found = await leadstore.load_states(conn, ids, lock=lock, known=self.cache.versions(ids))
        touched = {}
        stale = []
        for lead_id in ids:
            if lead_id in found:
                text, merged_into, version = found[lead_id]
                if text is None:
                    state = self.cache.take(lead_id, version)
                else:
                    state = decode_state(text)
                if state is None:  # let go meanwhile: read it whole
                    stale.append(lead_id)
                    continue
                touched[lead_id] = _Touched(state, merged_into, version=version)
            else:
                touched[lead_id] = _Touched(LeadState.new(lead_id, now=now))
        if stale:
            for lead_id, (text, merged_into, version) in (
                await leadstore.load_states(conn, stale, lock=lock)
            ).items():
                assert text is not None
                touched[lead_id] = _Touched(decode_state(text), merged_into, version=version)
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

    def _stitch(
        self,
        touched: dict[str, _Touched],
        lead: _Touched,
        anon_id: str,
        histories: Mapping[str, list[BehaviourTracked]],
        run: _Pass,
        now: datetime,
    ) -> None:
        subject = f"{ANON_PREFIX}{anon_id}"
        anon = touched.get(subject)
        if anon is None or anon.merged_into is not None or lead.state.anonymous:
            return
        history = [*histories.get(subject, ()), *run.here.get(subject, ())]
        decision = stitch(lead.state, anon.state, history, self.rules, now=now)
        lead.decisions.append(decision)
        anon.merged_into = lead.state.lead_id
        # The visitor's row is written, marked merged.
        anon.decisions.append(Decision(state=anon.state, changed=True))

    # -- writing ------------------------------------------------------------------------------

    async def _persist(
        self, conn: asyncpg.Connection, touched: dict[str, _Touched], now: datetime
    ) -> list[OutboxRecord]:
        changed = {k: t for k, t in touched.items() if t.decisions}
        if not changed:
            return []
        ledger: list[LedgerEntry] = []
        transitions: list[TransitionRow] = []
        rows: list[LeadRow] = []
        out: list[OutboxRecord] = []
        for lead_id, t in changed.items():
            s = t.state
            behaviour = behaviour_score(s, now, self.rules)
            priority = weigh(s.fit_score, behaviour, self.rules)
            rows.append(leadstore.lead_row(s, t.merged_into, behaviour, priority, self.rules, now))
            entries = [e for d in t.decisions for e in d.ledger]
            ledger += entries
            for d in t.decisions:
                transitions += leadstore.transition_rows(lead_id, d.transitions)
                if d.recycle is not None:
                    out.append(self.outputs.nurture(d.recycle))
            if entries:
                out.append(
                    self.outputs.score_changed(
                        s,
                        entries,
                        behaviour=behaviour,
                        priority=priority,
                        rules_version=self.rules.version,
                        scored_at=now,
                    )
                )
        versions = await leadstore.save_leads(conn, rows)
        self._written = {k: (versions[k], t.state) for k, t in changed.items() if k in versions}
        await leadstore.insert_ledger(conn, ledger)
        await leadstore.insert_transitions(conn, transitions)
        members = [
            _pool_row(t.state)
            for t in changed.values()
            if t.state.stage == "recycled" and t.merged_into is None
        ]
        leaving = [k for k, t in changed.items() if t.state.stage != "recycled" or t.merged_into]
        await leadstore.sync_recycle_pool(conn, [m for m in members if m is not None], leaving)
        out += await self._followups(conn, changed, now)
        return out

    async def _followups(
        self, conn: asyncpg.Connection, changed: dict[str, _Touched], now: datetime
    ) -> list[OutboxRecord]:
        relevant = [k for k, t in changed.items() if needs_desk(t.decisions)]
        if not relevant:
            return []
        current = await leadstore.open_followups(conn, relevant)
        saved: dict[str, Followup] = {}
        opened: list[Followup] = []
        for lead_id in relevant:
            done = settle(current.get(lead_id), changed[lead_id].decisions, now)
            saved.update(done.changed)
            opened += done.opened
        await self._assign(conn, opened, changed, now)
        rows = list(saved.values())
        await leadstore.save_followups(conn, rows)
        return [self.outputs.followup(r) for r in rows]

    async def _assign(
        self,
        conn: asyncpg.Connection,
        rows: list[Followup],
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

    def followup_message(self, r: Followup) -> OutboxRecord:
        return self.outputs.followup(r)


def _source_and_id(qualified_id: str) -> tuple[str, str]:
    source, event_id = split(qualified_id)
    return source or "events", event_id


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
