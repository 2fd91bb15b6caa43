"""``leadcycle lead``: one lead's state, history and a score explanation that checks itself."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import asyncpg

from infra import leadstore
from scoring.intake import split
from scoring.ledger import LedgerEntry, score_from_ledger
from scoring.rules import RuleSet
from scoring.scores import behaviour_score, priority
from scoring.state import LeadState, decode_state
from workers.render import printable_tree


async def explain_lead(
    conn: asyncpg.Connection, lead_id: str, rules: RuleSet, *, at: datetime
) -> dict[str, Any] | None:
    row = await conn.fetchrow("SELECT state, merged_into FROM leads WHERE lead_id = $1", lead_id)
    if row is None:
        return None
    state = decode_state(row["state"])
    ledger = await leadstore.ledger_of(conn, lead_id)
    history = await conn.fetch(
        """SELECT from_stage, to_stage, at, reason, event_id, accepted FROM stage_transitions
            WHERE lead_id = $1 ORDER BY at, transition_id""",
        lead_id,
    )
    merges = await conn.fetch(
        """SELECT absorbed, survivor, email, event_id, merged_at FROM lead_merges
            WHERE survivor = $1 OR absorbed = $1 ORDER BY merged_at, absorbed""",
        lead_id,
    )
    followups = await conn.fetch(
        """SELECT followup_id, status, why_now, due_at, assignee, sla_breached, closed_reason
             FROM followups WHERE lead_id = $1 ORDER BY created_at""",
        lead_id,
    )
    stated = await _stated_times(conn, {e.event_id for e in ledger})
    fit_ledger, behaviour_ledger = score_from_ledger(ledger, at=at, rules=rules)
    behaviour = behaviour_score(state, at, rules)
    return {
        "lead_id": lead_id,
        "merged_into": row["merged_into"],
        "at": at.isoformat(),
        "rules_version": state.rules_version,
        "stage": state.stage,
        "stage_since": state.stage_since.isoformat(),
        "profile": state.profile.as_dict(),
        "fit_score": state.fit_score,
        "grade": state.fit_grade,
        "behaviour_score": behaviour,
        "priority": priority(state, at, rules),
        "excluded": state.exclusion_reason if state.excluded else None,
        "recycle": _recycle(state),
        "unknown_bant": state.unknown_bant(),
        "reproduced_from_ledger": {
            "fit_score": fit_ledger,
            "behaviour_score": behaviour_ledger,
            "matches": math.isclose(fit_ledger, state.fit_score, abs_tol=1e-6)
            and math.isclose(behaviour_ledger, behaviour, rel_tol=1e-9, abs_tol=1e-6),
        },
        "stage_history": [dict(r) for r in history],
        "merges": [{**dict(r), "merged_at": r["merged_at"].isoformat()} for r in merges],
        "followups": [dict(r) for r in followups],
        "ledger": [_entry(e, stated.get(e.event_id)) for e in ledger],
    }


async def _stated_times(conn: asyncpg.Connection, qualified_ids: set[str]) -> dict[str, datetime]:
    """qualified event id -> the time its producer stated, for events scored at another time
    (a clock too far ahead: see docs/operations.md, "Event time")."""
    keys = [split(q) for q in sorted(qualified_ids)]
    keys = [(source, event_id) for source, event_id in keys if source is not None]
    if not keys:
        return {}
    rows = await conn.fetch(
        """SELECT e.qualified_id, e.stated_occurred_at
             FROM unnest($1::text[], $2::text[]) AS k(event_id, source)
             JOIN event_log e ON e.event_id = k.event_id AND e.source = k.source
            WHERE e.stated_occurred_at IS NOT NULL""",
        [event_id for _, event_id in keys],
        [source for source, _ in keys],
    )
    return {r["qualified_id"]: r["stated_occurred_at"] for r in rows}


def _entry(entry: LedgerEntry, stated: datetime | None) -> dict[str, Any]:
    """A ledger entry for the view: with the producer's own event id and its source, and the
    stated time of an event scored at another time (``occurred_at`` is the time used)."""
    doc = {k: v.isoformat() if isinstance(v, datetime) else v for k, v in entry._asdict().items()}
    source, doc["producer_event_id"] = split(entry.event_id)
    doc["source"] = source
    doc["stated_occurred_at"] = stated.isoformat() if stated is not None else None
    return doc


def _recycle(state: LeadState) -> dict[str, Any] | None:
    r = state.recycle
    if r is None:
        return None
    return {
        "reason": r.reason,
        "since": r.since.isoformat(),
        "revisit_on": r.revisit_on.isoformat() if r.revisit_on else None,
        "track": r.track,
    }


def render_explanation(doc: dict[str, Any]) -> str:
    """The explanation as text for a terminal: every string in it made printable first (CRM
    profiles, tracked labels and reasons are untrusted; workers/render.py says why)."""
    doc = printable_tree(doc)
    p = doc["profile"]
    check = doc["reproduced_from_ledger"]
    lines = [
        f"lead {doc['lead_id']}  stage {doc['stage']} since {doc['stage_since']}"
        + (f"  (merged into {doc['merged_into']})" if doc["merged_into"] else ""),
        f"  {p.get('job_title') or '?'} at {p.get('company_name') or '?'} "
        f"({p.get('company_size') or '?'} employees, {p.get('industry') or '?'}, "
        f"{p.get('country') or '?'}), source {p.get('source') or '?'}, "
        f"owner {p.get('owner') or '-'}",
        f"  fit {doc['fit_score']:.1f} (grade {doc['grade']})  behaviour "
        f"{doc['behaviour_score']:.1f}  priority {doc['priority']:.1f}  at {doc['at']}",
        f"  from the ledger: fit {check['fit_score']:.1f}, behaviour {check['behaviour_score']:.1f}"
        f" -> {'matches' if check['matches'] else 'DOES NOT MATCH'}",
        f"  unknown BANT: {', '.join(doc['unknown_bant']) or 'none'}",
    ]
    if doc["excluded"]:
        lines.append(f"  excluded: {doc['excluded']}")
    if doc["recycle"]:
        r = doc["recycle"]
        lines.append(
            f"  recycled: {r['reason']} since {r['since']}, track {r['track']}, "
            f"revisit {r.get('revisit_on') or '-'}"
        )
    lines.append("stage history:")
    for h in doc["stage_history"]:
        mark = "" if h["accepted"] else "  [refused]"
        lines.append(
            f"  {h['at']:%Y-%m-%d %H:%M}  {h['from_stage']} -> {h['to_stage']}: {h['reason']}{mark}"
        )
    for m in doc.get("merges", []):
        if m["survivor"] == doc["lead_id"]:
            lines.append(
                f"merged: {m['absorbed']} (same email {m['email']}) at {m['merged_at'][:16]},"
                f" event {m['event_id']}: its history is this lead's"
            )
        else:
            lines.append(f"merged into {m['survivor']} at {m['merged_at'][:16]}")
    lines.append("follow-ups:")
    for f in doc["followups"]:
        lines.append(
            f"  {f['followup_id']} {f['status']} {f['why_now']} due {f['due_at']:%Y-%m-%d %H:%M}"
            f" {f['assignee'] or 'unassigned'} {f['closed_reason'] or ''}"
        )
    lines.append(f"ledger ({len(doc['ledger'])} entries):")
    for e in doc["ledger"]:
        source = f" ({e['source']})" if e.get("source") else ""
        lines.append(
            f"  {e['occurred_at'][:16]}  {e['kind']:<9} {e['rule_id']:<24} "
            f"{e['points']:>+7.1f}  event {e.get('producer_event_id', e['event_id'])}{source}"
        )
        if e.get("stated_occurred_at"):
            lines.append(
                f"    stated {e['stated_occurred_at'][:19]}, scored at {e['occurred_at'][:19]}"
                " (clock ahead of its receive time)"
            )
    return "\n".join(lines)
