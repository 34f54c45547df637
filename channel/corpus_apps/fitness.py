"""Puls: a fitness tracker app (German, kebab-case JSON, numeric sensor series).

Requests carry ``x-corr`` (uppercase UUID), ``x-sent-at`` (ms), a session
cookie and the tracker's serial number; uploads are arrays of heart-rate
and step samples; responses are daily summaries and goals in German.
"""

from __future__ import annotations

import random

from channel.corpus_apps.base import (
    Headers,
    Json,
    Operation,
    PushKind,
    Session,
    base62,
    hex_digits,
    uuid4,
    weighted,
)
from channel.wire.errors import ErrorCode

_BASE_MS = 1_755_000_000_000
_WORKOUTS = (
    ("laufen", "Laufen"),
    ("radfahren", "Radfahren"),
    ("schwimmen", "Schwimmen"),
    ("yoga", "Yoga"),
)


def _samples(s: Session, n: int, low: int, high: int) -> list[int]:
    r = s.rng
    value = r.randint(low, high)
    out = []
    for _ in range(n):
        value = max(low, min(high, value + r.randint(-4, 4)))
        out.append(value)
    return out


def _req_sync(s: Session) -> Json:
    r = s.rng
    start = s.clock_ms // 1000 - 900
    return {
        "tracker": s.facts["serial"],
        "from": start,
        "interval-s": 60,
        "heart-rate": _samples(s, r.randint(8, 15), 55, 150),
        "steps": _samples(s, r.randint(8, 15), 0, 120),
        "battery": r.randint(5, 100),
    }


def _resp_sync(s: Session) -> Json:
    return {"accepted": True, "next-sync-s": 900, "server-time": s.clock_ms}


def _req_day(s: Session) -> Json:
    return {"date": f"2025-09-{s.rng.randint(1, 28):02d}"}


def _resp_day(s: Session) -> Json:
    r = s.rng
    return {
        "steps": r.randint(800, 22000),
        "ziel-schritte": 10000,
        "kalorien": r.randint(1400, 3600),
        "ruhepuls": r.randint(48, 78),
        "schlaf": {
            "dauer-min": r.randint(300, 560),
            "tief-min": r.randint(40, 140),
            "bewertung": r.choice(["gut", "mittel", "schlecht"]),
        },
        "stuendlich": _samples(s, 24, 0, 2500),
    }


def _req_workout(s: Session) -> Json:
    r = s.rng
    kind, _ = r.choice(_WORKOUTS)
    return {
        "typ": kind,
        "start": s.clock_ms // 1000 - r.randint(600, 5400),
        "dauer-s": r.randint(600, 5400),
        "distanz-m": r.randint(0, 21000),
        "puls": _samples(s, 12, 90, 185),
    }


def _resp_workout(s: Session) -> Json:
    return {
        "id": f"w-{base62(s.rng, 12)}",
        "gespeichert": True,
        "neue-bestleistung": s.rng.random() < 0.1,
    }


def _req_goals(s: Session) -> Json:
    return {"woche": s.rng.randint(1, 52)}


def _resp_goals(s: Session) -> Json:
    r = s.rng
    return {
        "ziele": [
            {"name": "Schritte pro Tag", "ziel": 10000, "erreicht-tage": r.randint(0, 7)},
            {"name": "Aktive Minuten", "ziel": 150, "erreicht": r.randint(0, 300)},
        ],
        "tipp": r.choice(
            [
                "Mach heute einen Spaziergang nach dem Essen.",
                "Trink genug Wasser.",
                "Gönn dir Ruhe.",
            ]
        ),
    }


def _req_friends(s: Session) -> Json:
    return {"rangliste": "woche"}


def _resp_friends(s: Session) -> Json:
    r = s.rng
    names = ("Anna", "Jonas", "Lena", "Felix", "Marie", "Paul", "Sophie")
    return {
        "eintraege": [
            {"name": r.choice(names), "schritte": r.randint(2000, 90000), "platz": i + 1}
            for i in range(r.randint(2, 5))
        ]
    }


def _push_goal(s: Session) -> Json:
    return {
        "art": "ziel-erreicht",
        "titel": "Tagesziel geschafft! 🎉",
        "schritte": s.rng.randint(10000, 20000),
    }


def _push_reminder(s: Session) -> Json:
    return {
        "art": "erinnerung",
        "titel": "Zeit für Bewegung",
        "text": "Du hast seit 50 Minuten gesessen.",
    }


def _push_friend(s: Session) -> Json:
    return {
        "art": "freund",
        "titel": "Jonas hat dich überholt",
        "schritte": s.rng.randint(5000, 30000),
    }


class FitnessApp:
    name = "fitness"
    description = "Puls: fitness tracker, German, sensor arrays, uppercase request UUIDs"
    operations = (
        Operation("tracker.sync", _req_sync, _resp_sync),
        Operation("summary.day", _req_day, _resp_day),
        Operation("workout.save", _req_workout, _resp_workout),
        Operation("goals.week", _req_goals, _resp_goals),
        Operation("friends.ranking", _req_friends, _resp_friends),
    )
    launch_ops = ("tracker.sync", "summary.day")
    push_kinds = (
        PushKind("goal.reached", 1.0, _push_goal),
        PushKind("reminder.move", 2.0, _push_reminder),
        PushKind("friend.activity", 1.0, _push_friend),
    )

    def new_session(self, rng: random.Random) -> Session:
        return Session(
            rng,
            _BASE_MS + rng.randint(0, 30 * 86_400_000),
            {
                "cookie": f"PULS_SESSION={hex_digits(rng, 40)}",
                "serial": f"PT-{hex_digits(rng, 10, upper=True)}",
                "locale": weighted(rng, (("de-DE", 0.7), ("de-AT", 0.2), ("de-CH", 0.1))),
            },
        )

    def request_headers(self, s: Session, op: Operation) -> Headers:
        return [
            ["x-corr", uuid4(s.rng, upper=True)],
            ["x-sent-at", str(s.clock_ms)],
            ["cookie", s.facts["cookie"]],
            ["x-tracker", s.facts["serial"]],
            ["accept-language", s.facts["locale"]],
        ]

    def response_headers(self, s: Session, op: Operation, request: Headers) -> Headers:
        return [["x-corr", request[0][1]], ["x-took-ms", str(s.rng.randint(2, 180))]]

    def response_envelope(self, s: Session, op: Operation, data: Json) -> tuple[int, Json]:
        if s.rng.random() < 0.01:
            return int(ErrorCode.TIMEOUT), {"fehler": "zeitueberschreitung"}
        return 0, data

    def push_headers(self, s: Session, kind: PushKind) -> Headers:
        return [["x-sent-at", str(s.clock_ms)]]

    def push_message_id(self, s: Session) -> str:
        return uuid4(s.rng).replace("-", "")
