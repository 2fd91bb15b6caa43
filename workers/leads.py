"""The scoring step of a batch, done by the owner of the leads it changes.

Every subject (lead, ``email:`` lead, ``anon:`` visitor) belongs to one shard, and the worker
that owns the shard's input partitions is the only one that reads and writes it (infra/
shards.py). A batch takes its shards' locks (nobody else holds them in steady state), takes
the work other owners forwarded to its shards (infra/inbox.py), reads everything it needs in
one query per kind, folds the events over mutable working states with no database call, and
writes once. Work for a subject of another shard is forwarded, in the same transaction:

- an event whose subject another worker owns (``event``);
- an ``identify`` that links a visitor goes to the visitor's owner first (``link``), which
  links it, retires the visitor and sends its history to the lead's owner (``stitch``);
- a CRM profile that carries an email lead's address asks that lead's owner to give it up
  (``claim``), which sends its state to the CRM lead's owner (``absorb``).

Publishing happens later, from the outbox. docs/architecture.md tells the whole story.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import cast
from zoneinfo import ZoneInfo

import asyncpg

from events import BehaviourTracked, ProfileUpdated, TopicNames
from events.decode import INPUT_MODELS, InputEvent
from infra import inbox, leadstore
from infra.inbox import Item
from infra.leadstore import LeadRow, PoolRow, TransitionRow
from infra.shards import Shards, lock_shards
from infra.store import OutboxRecord
from scoring.assignment import assign
from scoring.decision import Decision
from scoring.desk import Followup, needs_desk, settle
from scoring.engine import apply, stitch, sweep
from scoring.intake import admitted, split
from scoring.ledger import LedgerEntry
from scoring.merge import EMAIL_PREFIX, is_crm_lead, is_email_lead, merge
from scoring.rules import RuleSet
from scoring.scores import behaviour_score, weigh
from scoring.state import ANON_PREFIX, LeadState, decode_state, encode_state
from workers.outputs import Outputs
from workers.statecache import StateCache
from workers.subjects import by_email_lookup, route

log = logging.getLogger("leadcycle.leads")

#: Forwarded items one batch takes at most.
INBOX_BATCH = 5000
#: Hops along ``merged_into`` a subject is followed.
MAX_HOPS = 5


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

    @property
    def exists(self) -> bool:
        """A row, or decisions of this batch that will make one."""
        return self.version is not None or bool(self.decisions)


@dataclass
class _Batch:
    """What one batch knows and decided."""

    touched: dict[str, _Touched]
    links: dict[str, str]
    by_email: dict[str, str]
    #: Forwarded events (and visitor histories) by qualified id.
    logged: dict[str, InputEvent] = field(default_factory=dict)
    #: ``anon:<id>`` -> its logged history, for visitors an identify links here.
    histories: dict[str, list[BehaviourTracked]] = field(default_factory=dict)
    #: ``anon:<id>`` -> the behaviour this batch applied to that visitor so far.
    here: dict[str, list[BehaviourTracked]] = field(default_factory=lambda: defaultdict(list))
    #: Emails an identify of this batch gave a lead.
    claimed: set[str] = field(default_factory=set)
    #: ``(anonymous id, lead id, event id, at)`` of identity links made.
    new_links: list[tuple[str, str, str, datetime]] = field(default_factory=list)
    #: ``(qualified event id, lead)`` of email-only events applied to a lead.
    resolved: list[tuple[str, str]] = field(default_factory=list)
    #: ``(absorbed, survivor, email, event id)`` of the merges made here.
    merges: list[tuple[str, str, str, str]] = field(default_factory=list)
    #: Work for other owners.
    forwards: list[Item] = field(default_factory=list)


class LeadProcessor:
    """Applies a batch's new events (or a sweep) to the state of the leads this process owns,
    in the batch's transaction."""

    def __init__(
        self,
        rules: RuleSet,
        topics: TopicNames,
        assignment: Assignment,
        *,
        cache_size: int = 0,
        shards: Shards | None = None,
    ) -> None:
        self.rules = rules
        self.topics = topics
        self.assignment = assignment
        self.tz = ZoneInfo(rules.calendar.timezone)
        self.outputs = Outputs(topics)
        self.cache = StateCache(cache_size)
        #: The shards this process owns (all of them unless a consumer says otherwise).
        self.shards = shards or Shards(partitions=1)
        #: States written by the batch in flight, for the cache once it commits.
        self._written: dict[str, tuple[str, LeadState]] = {}
        #: Items forwarded to other owners, and taken from them, since start.
        self.forwarded = 0
        self.received = 0

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
        """Apply a batch's new events, and the work forwarded to this process's shards."""
        owned = self.shards.mine()
        await lock_shards(conn, owned)
        items = await inbox.take(conn, owned, limit=INBOX_BATCH)
        if not events and not items:
            return []
        self.received += len(items)
        # Within a batch, apply in event-time order (stable: arrival order breaks ties). Kafka
        # orders only within a partition; event time is the better order across topics.
        events = sorted(events, key=lambda e: e.occurred_at)
        b = await self._read(conn, events, items, now)
        for item in items:
            await self._item(conn, b, item, now)
        for event in events:
            await self._event(conn, b, event, now)
        await leadstore.link_identities(conn, b.new_links)
        await leadstore.record_resolutions(
            conn, [(*_source_and_id(qid), lead) for qid, lead in b.resolved]
        )
        out = await self._persist(conn, b.touched, now)
        if b.merges:
            await leadstore.record_merges(conn, b.merges, now)
            out += [self.outputs.merged(*m, at=now) for m in b.merges]
        await inbox.put(conn, b.forwards)
        self.forwarded += len(b.forwards)
        return out

    # -- reading: one query per kind ---------------------------------------------------------

    async def _read(
        self,
        conn: asyncpg.Connection,
        events: Sequence[InputEvent],
        items: Sequence[Item],
        now: datetime,
    ) -> _Batch:
        wanted_ids = [i.qualified_id for i in items if i.qualified_id]
        for i in items:
            if i.kind == "stitch" and i.body:
                wanted_ids += json.loads(i.body)["history"]
        logged = _admit(await inbox.logged_events(conn, wanted_ids))
        every = [*events, *(logged[q] for q in (i.qualified_id for i in items) if q in logged)]
        behaviour = [e for e in every if isinstance(e, BehaviourTracked)]
        links = await leadstore.identity_links(
            conn, [e.anonymous_id for e in behaviour if e.anonymous_id and not e.lead_id]
        )
        emails = {e.email for e in behaviour if by_email_lookup(e) and e.email}
        emails |= {e.email for e in every if isinstance(e, ProfileUpdated) and e.email}
        emails |= {i.subject.removeprefix(EMAIL_PREFIX) for i in items if is_email_lead(i.subject)}
        by_email = await leadstore.leads_by_email(conn, emails)
        b = _Batch({}, links, by_email, logged)
        wanted: set[str] = set()
        for e in events:
            wanted |= self._subjects(b, e)
        for i in items:
            wanted.add(i.subject)
            if i.kind == "claim" and i.body:
                wanted.add(json.loads(i.body)["survivor"])
            if i.kind == "link" and i.qualified_id in logged:
                wanted |= self._subjects(b, logged[i.qualified_id])
        b.touched = await self._load(conn, {w for w in wanted if self.shards.owns(w)}, now)
        # Follow merges to their survivors (a second read, before the fold, when any).
        for _ in range(MAX_HOPS):
            more = {
                t.merged_into
                for t in b.touched.values()
                if t.merged_into and t.merged_into not in b.touched
                and self.shards.owns(t.merged_into)
            }  # fmt: skip
            if not more:
                break
            b.touched.update(await self._load(conn, more, now))
        b.histories = await self._histories(conn, b, events, items)
        return b

    def _subjects(self, b: _Batch, e: InputEvent) -> set[str]:
        """The subjects an input event may read or change here."""
        found = {route(e, b.links, b.by_email, b.claimed)[0]}
        if isinstance(e, BehaviourTracked) and e.anonymous_id and e.type == "identify":
            found.add(f"{ANON_PREFIX}{e.anonymous_id}")
        if isinstance(e, ProfileUpdated) and e.email and is_crm_lead(e.lead_id):
            found.add(f"{EMAIL_PREFIX}{e.email}")  # the same person, if it exists
        return found

    async def _histories(
        self,
        conn: asyncpg.Connection,
        b: _Batch,
        events: Sequence[InputEvent],
        items: Sequence[Item],
    ) -> dict[str, list[BehaviourTracked]]:
        """The logged history of every visitor an identify may link here, in one query:
        visitors of this shard with a row, not merged yet. Events this batch applies itself,
        or still waiting in the inbox, are left out (the fold adds those it applied to the
        visitor before the identify)."""
        subjects = set()
        for e in [*events, *(b.logged[i.qualified_id] for i in items
                             if i.kind == "link" and i.qualified_id in b.logged)]:  # fmt: skip
            if isinstance(e, BehaviourTracked) and e.type == "identify" and e.anonymous_id:
                anon = b.touched.get(f"{ANON_PREFIX}{e.anonymous_id}")
                if anon is not None and anon.version is not None and anon.merged_into is None:
                    subjects.add(anon.state.lead_id)
        if not subjects:
            return {}
        batch = {e.event_id for e in events} | set(b.logged)
        return {
            subject: [
                admitted(BehaviourTracked.model_validate_json(p), qualified_id, at)
                for p, qualified_id, at in rows
                if qualified_id not in batch
            ]
            for subject, rows in (await leadstore.anonymous_histories(conn, subjects)).items()
        }

    async def _load(
        self, conn: asyncpg.Connection, ids: set[str], now: datetime
    ) -> dict[str, _Touched]:
        found = await leadstore.load_states(conn, ids, known=self.cache.versions(ids))
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
                await leadstore.load_states(conn, stale)
            ).items():
                assert text is not None
                touched[lead_id] = _Touched(decode_state(text), merged_into, version=version)
        return touched

    # -- the fold ----------------------------------------------------------------------------

    async def _event(
        self, conn: asyncpg.Connection, b: _Batch, e: InputEvent, now: datetime
    ) -> None:
        subject, linking = route(e, b.links, b.by_email, b.claimed)
        if linking and isinstance(e, BehaviourTracked) and e.anonymous_id:
            anon = f"{ANON_PREFIX}{e.anonymous_id}"
            if self.shards.owns(anon):
                await self._link(conn, b, e, subject, now)
            else:
                self._forward(b, "link", anon, e.event_id)
            return
        await self._deliver(conn, b, e, subject, now)

    async def _item(self, conn: asyncpg.Connection, b: _Batch, item: Item, now: datetime) -> None:
        if item.kind in ("event", "link"):
            e = b.logged.get(item.qualified_id or "")
            if e is None:  # purged by retention meanwhile: nothing left to apply
                log.warning("forwarded event %s is gone from the log", item.qualified_id)
                return
            if item.kind == "event":
                await self._deliver(conn, b, e, item.subject, now)
            else:
                await self._event(conn, b, e, now)
            return
        body = json.loads(item.body or "{}")
        if item.kind == "stitch":
            history = [b.logged[q] for q in body["history"] if q in b.logged]
            await self._stitch_into(conn, b, item.subject, body["anon"], history, now)  # type: ignore[arg-type]
        elif item.kind == "claim":
            await self._claimed(conn, b, item.subject, body["survivor"], body["email"],
                                item.qualified_id or "", now)  # fmt: skip
        elif item.kind == "absorb":
            absorbed = decode_state(body["state"])
            lead = await self._local(conn, b, item.subject, now)
            if lead is None:
                self._forward(b, "absorb", self._follow(b, item.subject), None, item.body)
                return
            self._absorb(b, lead, absorbed, body["email"], item.qualified_id or "", now)

    async def _link(
        self,
        conn: asyncpg.Connection,
        b: _Batch,
        e: BehaviourTracked,
        target: str,
        now: datetime,
    ) -> None:
        """An identify at its visitor's owner: link the visitor to ``target``, retire it and
        send its history there, then the identify itself."""
        assert e.anonymous_id is not None
        anon_id = e.anonymous_id
        key = f"{ANON_PREFIX}{anon_id}"
        if e.email:
            b.claimed.add(e.email)
        anon = b.touched.get(key) or (await self._load(conn, {key}, now))[key]
        b.touched[key] = anon
        target = self._redirect(b, target)
        if anon.merged_into is not None:  # linked before: the identify is the lead's own
            await self._deliver(conn, b, e, target, now)
            return
        if anon_id not in b.links:
            b.links[anon_id] = target
            b.new_links.append((anon_id, target, e.event_id, e.occurred_at))
        if not target.startswith(ANON_PREFIX):
            # Retired even if it had no event yet: its row says where its events go.
            history = [*b.histories.get(key, ()), *b.here.get(key, ())]
            anon.merged_into = target
            anon.decisions.append(Decision(state=anon.state, changed=True))
            await self._stitch_into(conn, b, target, anon_id, history, now)
        await self._deliver(conn, b, e, target, now)

    async def _stitch_into(
        self,
        conn: asyncpg.Connection,
        b: _Batch,
        target: str,
        anon_id: str,
        history: list[BehaviourTracked],
        now: datetime,
    ) -> None:
        target = self._redirect(b, self._follow(b, target))
        lead = await self._local(conn, b, target, now)
        if lead is None:
            body = {"anon": anon_id, "history": [e.event_id for e in history]}
            self._forward(b, "stitch", self._follow(b, target), None, json.dumps(body))
            return
        if lead.state.anonymous:
            return
        lead.decisions.append(stitch(lead.state, anon_id, history, self.rules, now=now))

    async def _deliver(
        self, conn: asyncpg.Connection, b: _Batch, e: InputEvent, subject: str, now: datetime
    ) -> None:
        """Apply ``e`` to ``subject`` (or where it was merged) if it is ours, else forward it."""
        subject = self._redirect(b, self._follow(b, subject))
        lead = await self._local(conn, b, subject, now)
        if lead is None:
            self._forward(b, "event", self._follow(b, subject), e.event_id)
            return
        lead.decisions.append(apply(lead.state, e, self.rules, now=now))
        if isinstance(e, BehaviourTracked):
            if lead.state.anonymous:
                b.here[lead.state.lead_id].append(e)
            elif by_email_lookup(e):
                b.resolved.append((e.event_id, lead.state.lead_id))
        if isinstance(e, ProfileUpdated) and e.email:
            await self._claim(conn, b, lead, e.event_id, now)

    async def _claim(
        self, conn: asyncpg.Connection, b: _Batch, lead: _Touched, event_id: str, now: datetime
    ) -> None:
        """A CRM lead's profile holds an email: an email lead of that address is the same
        person and is merged into it; another CRM lead with it is a duplicate (kept apart,
        reported: ``leadcycle duplicates``)."""
        survivor, email = lead.state.lead_id, lead.state.profile.email
        if email is None or not is_crm_lead(survivor):
            return
        holder = b.by_email.get(email)
        if holder is not None and holder != survivor and is_crm_lead(holder):
            log.warning("leads %s and %s share the email %s: duplicates", holder, survivor, email)
            return
        b.by_email[email] = survivor  # later identifies of this email in the batch come here
        absorbed = f"{EMAIL_PREFIX}{email}"
        if not self.shards.owns(absorbed):
            body = json.dumps({"survivor": survivor, "email": email})
            self._forward(b, "claim", absorbed, event_id, body)
            return
        await self._claimed(conn, b, absorbed, survivor, email, event_id, now)

    async def _claimed(
        self,
        conn: asyncpg.Connection,
        b: _Batch,
        absorbed: str,
        survivor: str,
        email: str,
        event_id: str,
        now: datetime,
    ) -> None:
        """At the email lead's owner: give the lead up to ``survivor``."""
        other = b.touched.get(absorbed)
        if other is None or other.merged_into is not None or not other.exists:
            return
        other.merged_into = survivor
        other.decisions.append(
            Decision(
                state=other.state,
                changed=True,
                close_followup=True,
                closed_reason=f"merged into {survivor}",
            )
        )
        lead = await self._local(conn, b, survivor, now)
        if lead is None:
            body = {"state": encode_state(other.state), "email": email, "absorbed": absorbed}
            self._forward(b, "absorb", survivor, event_id, json.dumps(body))
            return
        self._absorb(b, lead, other.state, email, event_id, now)

    def _absorb(
        self,
        b: _Batch,
        lead: _Touched,
        absorbed: LeadState,
        email: str,
        event_id: str,
        now: datetime,
    ) -> None:
        lead.decisions.append(merge(lead.state, absorbed, self.rules, now=now))
        b.merges.append((absorbed.lead_id, lead.state.lead_id, email, event_id))

    # -- subjects ----------------------------------------------------------------------------

    def _follow(self, b: _Batch, subject: str) -> str:
        """Where ``subject`` lives on, as far as this batch knows (merges it read or made)."""
        for _ in range(MAX_HOPS):
            t = b.touched.get(subject)
            if t is None or t.merged_into is None:
                break
            subject = t.merged_into
        return subject

    def _redirect(self, b: _Batch, subject: str) -> str:
        """An email lead that does not exist yet is not made when a CRM lead has the email."""
        if is_email_lead(subject):
            t = b.touched.get(subject)
            crm = b.by_email.get(subject.removeprefix(EMAIL_PREFIX))
            if (t is None or not t.exists) and crm is not None and is_crm_lead(crm):
                return crm
        return subject

    async def _local(
        self, conn: asyncpg.Connection, b: _Batch, subject: str, now: datetime
    ) -> _Touched | None:
        """The working state of ``subject`` if this process owns it (read now if the batch
        did not: a merge target it learnt of meanwhile), else None."""
        if not self.shards.owns(subject):
            return None
        t = b.touched.get(subject)
        if t is None:
            t = b.touched[subject] = (await self._load(conn, {subject}, now))[subject]
        return t

    def _forward(
        self, b: _Batch, kind: str, subject: str, event_id: str | None, body: str | None = None
    ) -> None:
        b.forwards.append(Item(self.shards.shard(subject), kind, subject, event_id, body))

    async def sweep_leads(
        self, conn: asyncpg.Connection, lead_ids: Sequence[str], now: datetime
    ) -> list[OutboxRecord]:
        """Time rules for leads whose shards the caller locked (no new event)."""
        touched = await self._load(conn, set(lead_ids), now)
        for lead in touched.values():
            decision = sweep(lead.state, self.rules, now=now)
            if decision.changed:
                lead.decisions.append(decision)
        return await self._persist(conn, touched, now)

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
        foreign = [k for k in changed if not self.shards.owns(k)]
        assert not foreign, f"would write leads of shards this process does not own: {foreign}"
        versions = await leadstore.save_leads(
            conn, rows, {k: t.version for k, t in changed.items()}
        )
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


def _admit(rows: dict[str, tuple[str, str, datetime]]) -> dict[str, InputEvent]:
    """Logged events as the core sees them: by the qualified id and time they were scored."""
    out: dict[str, InputEvent] = {}
    for qualified_id, (topic, payload, at) in rows.items():
        model = INPUT_MODELS[topic][0]
        event = cast(InputEvent, model.model_validate_json(payload))
        out[qualified_id] = admitted(event, qualified_id, at)
    return out


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
