"""The output messages a batch publishes (through the outbox): score changes, nurture
enrollments and follow-up changes, built from the core's decisions in one place.

They are leadcycle's own values, already checked by the core. The one built per lead and
batch, ``score_changed``, is serialised straight from a dict by pydantic-core (no model object
per lead and entry); tests/unit/test_outputs.py checks it is exactly what the wire model
produces.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import datetime

from pydantic_core import to_json

from events import FollowupChanged, LeadMerged, NurtureEnrolled, TopicNames
from infra.store import OutboxRecord
from scoring.decision import RecycleDecision
from scoring.desk import Followup
from scoring.ledger import LedgerEntry
from scoring.state import LeadState


class Outputs:
    """Builds the outbox records of one worker's output topics."""

    def __init__(self, topics: TopicNames) -> None:
        self.topics = topics

    def score_changed(
        self,
        s: LeadState,
        entries: Sequence[LedgerEntry],
        *,
        behaviour: float,
        priority: float,
        rules_version: str,
        scored_at: datetime,
    ) -> OutboxRecord:
        """The lead's scores after a batch, with the ledger entries that changed them."""
        digest = hashlib.sha256("|".join(e.entry_id for e in entries).encode()).hexdigest()[:16]
        # ScoreChanged's fields, in its order (a test checks the two agree); serialised by
        # pydantic-core, as the model would be.
        msg = {
            "message_id": f"{s.lead_id}:{digest}",
            "lead_id": s.lead_id,
            "rules_version": rules_version,
            "scored_at": scored_at,
            "fit_score": s.fit_score,
            "grade": s.fit_grade,
            "behaviour_score": behaviour,
            "priority": priority,
            "stage": s.stage,
            "entries": [
                {
                    "entry_id": e.entry_id,
                    "event_id": e.event_id,
                    "rule_id": e.rule_id,
                    "kind": e.kind,
                    "occurred_at": e.occurred_at,
                    "raw_points": e.raw_points,
                    "points": e.points,
                }
                for e in entries
            ],
        }
        return OutboxRecord(self.topics.score_changes, s.lead_id.encode(), to_json(msg))

    def nurture(self, r: RecycleDecision) -> OutboxRecord:
        """Enroll a recycled lead on its reason's nurture track."""
        msg = NurtureEnrolled(
            message_id=f"{r.lead_id}:{r.since.isoformat()}",
            lead_id=r.lead_id,
            reason=r.reason,
            track=r.track,
            recycled_at=r.since,
            revisit_on=r.revisit_on,
        )
        return OutboxRecord(self.topics.nurture, r.lead_id.encode(), msg.model_dump_json().encode())

    def followup(self, r: Followup) -> OutboxRecord:
        """A follow-up as it is now (every change is a new version)."""
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

    def merged(
        self, absorbed: str, survivor: str, email: str, event_id: str, *, at: datetime
    ) -> OutboxRecord:
        """Two lead ids of one person became one (keyed by the absorbed id, whose
        followers need to switch)."""
        msg = LeadMerged(
            message_id=f"{absorbed}>{survivor}",
            survivor=survivor,
            absorbed=absorbed,
            email=email,
            merged_at=at,
            event_id=event_id,
        )
        return OutboxRecord(
            self.topics.lead_merges, absorbed.encode(), msg.model_dump_json().encode()
        )
