"""Wire schemas of leadcycle's topics (see docs/contract.md)."""

from events.common import WireModel
from events.decode import InputEvent, Rejection, decode
from events.outcomes import Bant, OutcomeRecorded
from events.outputs import (
    DeadLetter,
    FollowupChanged,
    LeadMerged,
    NurtureEnrolled,
    ScoreChanged,
)
from events.profiles import ProfileUpdated
from events.topics import CONTRACT, TopicNames
from events.tracking import BehaviourTracked, Context, Properties

__all__ = [
    "CONTRACT",
    "Bant",
    "BehaviourTracked",
    "Context",
    "DeadLetter",
    "FollowupChanged",
    "InputEvent",
    "LeadMerged",
    "NurtureEnrolled",
    "OutcomeRecorded",
    "ProfileUpdated",
    "Properties",
    "Rejection",
    "ScoreChanged",
    "TopicNames",
    "WireModel",
    "decode",
]
