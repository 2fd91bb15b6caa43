"""Wire schemas of leadcycle's topics (see docs/contract.md)."""

from events.common import WireModel
from events.outcomes import Bant, OutcomeRecorded
from events.outputs import DeadLetter, FollowupChanged, NurtureEnrolled, ScoreChanged
from events.profiles import ProfileUpdated
from events.topics import CONTRACT, TopicNames
from events.tracking import BehaviourTracked, Context, Properties

#: Anything that arrives on an input topic.
InputEvent = BehaviourTracked | ProfileUpdated | OutcomeRecorded

__all__ = [
    "CONTRACT",
    "Bant",
    "BehaviourTracked",
    "Context",
    "DeadLetter",
    "FollowupChanged",
    "InputEvent",
    "NurtureEnrolled",
    "OutcomeRecorded",
    "ProfileUpdated",
    "Properties",
    "ScoreChanged",
    "TopicNames",
    "WireModel",
]
