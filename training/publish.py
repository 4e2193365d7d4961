"""Announcements on the models topic: the machinery lives in the shared room
:mod:`forestream.registry.announce` (the evaluator's decider uses it too); re-exported here so
training's callers keep their imports."""

from forestream.registry.announce import (
    Action,
    Announced,
    EventKind,
    ModelsTopic,
    TopicEvent,
    TopicState,
    change_serving,
    model_event,
    publish_event,
    serving_ref,
)

__all__ = [
    "Action",
    "Announced",
    "EventKind",
    "ModelsTopic",
    "TopicEvent",
    "TopicState",
    "change_serving",
    "model_event",
    "publish_event",
    "serving_ref",
]
