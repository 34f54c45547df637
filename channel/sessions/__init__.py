"""The ground floor: connected devices, whatever their protocol and engine.

See docs/architecture.md.
"""

from channel.sessions.base import (
    FanoutEngine,
    FanoutPush,
    Headers,
    Session,
    SessionListener,
    jittered,
)
from channel.sessions.registry import SessionRegistry

__all__ = [
    "FanoutEngine",
    "FanoutPush",
    "Headers",
    "Session",
    "SessionListener",
    "SessionRegistry",
    "jittered",
]
