"""Chirp: a social feed and chat app (English, camelCase JSON).

Identity travels as headers on every request (``authorization: Bearer`` JWT,
``user-agent``, ``x-device-id``), request ids are lowercase UUIDs, client
times are Unix seconds; responses echo the request id and carry rate-limit
counters and ETags; bodies are lists of posts and messages with user objects.
"""

from __future__ import annotations

import base64
import json
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

_BASE_MS = 1_760_000_000_000
_FIRST = ("Emma", "Liam", "Olivia", "Noah", "Ava", "Mia", "Lucas", "Zoe", "Ethan", "Chloe")
_LAST = ("Smith", "Johnson", "Brown", "Garcia", "Miller", "Davis", "Wilson", "Taylor")
_WORDS = (
    "just",
    "finished",
    "the",
    "best",
    "coffee",
    "in",
    "town",
    "today",
    "weekend",
    "plans",
    "anyone",
    "watching",
    "game",
    "tonight",
    "new",
    "photo",
    "from",
    "trip",
    "to",
    "Lisbon",
    "can't",
    "believe",
    "this",
    "happened",
    "so",
    "proud",
    "of",
    "team",
    "launch",
    "day",
    "morning",
    "run",
    "done",
    "who",
    "else",
    "loves",
    "rainy",
    "days",
    "book",
    "club",
)
_TAGS = ("travel", "food", "music", "sports", "tech", "art", "books", "fitness", "pets")


def _text(rng: random.Random, low: int, high: int) -> str:
    words = rng.choices(_WORDS, k=rng.randint(low, high))
    if rng.random() < 0.4:
        words.append("#" + rng.choice(_TAGS))
    return " ".join(words).capitalize()


def _user(s: Session, known: bool = True) -> Json:
    r = s.rng
    handle = f"{r.choice(_FIRST).lower()}{r.randint(1, 9999)}"
    user = {
        "id": f"u_{base62(r, 10)}",
        "handle": handle,
        "displayName": f"{r.choice(_FIRST)} {r.choice(_LAST)}",
        "avatarUrl": f"https://cdn.chirp.example/avatars/{hex_digits(r, 16)}.jpg",
        "verified": r.random() < 0.08,
    }
    if known:
        user["followedByMe"] = r.random() < 0.6
    return user


def _post(s: Session) -> Json:
    r = s.rng
    post = {
        "id": f"p_{base62(r, 12)}",
        "author": _user(s),
        "text": _text(r, 4, 22),
        "createdAt": (s.clock_ms - r.randint(0, 86_400_000)) // 1000,
        "likeCount": int(r.paretovariate(1.2)) - 1,
        "replyCount": int(r.paretovariate(1.6)) - 1,
        "likedByMe": r.random() < 0.2,
    }
    if r.random() < 0.3:
        post["media"] = [
            {
                "type": "image",
                "url": f"https://cdn.chirp.example/m/{hex_digits(r, 20)}.webp",
                "w": 1080,
                "h": r.choice([1080, 1350, 608]),
            }
        ]
    return post


def _req_feed(s: Session) -> Json:
    cursor = s.facts.get("cursor")
    return {"limit": 10, "cursor": cursor, "includeReplies": False}


def _resp_feed(s: Session) -> Json:
    s.facts["cursor"] = base62(s.rng, 16)
    return {
        "posts": [_post(s) for _ in range(s.rng.randint(2, 4))],
        "nextCursor": s.facts["cursor"],
    }


def _req_post(s: Session) -> Json:
    return {"postId": f"p_{base62(s.rng, 12)}"}


def _resp_post(s: Session) -> Json:
    return {"post": _post(s), "replies": [_post(s) for _ in range(s.rng.randint(0, 2))]}


def _req_like(s: Session) -> Json:
    return {"postId": f"p_{base62(s.rng, 12)}", "like": s.rng.random() < 0.9}


def _resp_like(s: Session) -> Json:
    return {"ok": True, "likeCount": s.rng.randint(1, 500)}


def _req_send(s: Session) -> Json:
    r = s.rng
    return {
        "conversationId": s.facts["conversation"],
        "clientMessageId": str(uuid4(r)),
        "text": _text(r, 2, 14),
    }


def _resp_send(s: Session) -> Json:
    return {"messageId": f"m_{base62(s.rng, 14)}", "sentAt": s.clock_ms // 1000, "status": "sent"}


def _req_inbox(s: Session) -> Json:
    return {"since": s.clock_ms // 1000 - 3600}


def _resp_inbox(s: Session) -> Json:
    r = s.rng
    return {
        "conversations": [
            {
                "id": f"c_{base62(r, 10)}",
                "with": _user(s, known=False),
                "unread": r.randint(0, 5),
                "lastMessage": {
                    "text": _text(r, 2, 10),
                    "at": s.clock_ms // 1000 - r.randint(0, 9000),
                },
            }
            for _ in range(r.randint(1, 3))
        ]
    }


def _req_profile(s: Session) -> Json:
    return {"handle": f"{s.rng.choice(_FIRST).lower()}{s.rng.randint(1, 9999)}"}


def _resp_profile(s: Session) -> Json:
    r = s.rng
    return {
        "user": _user(s),
        "bio": _text(r, 3, 12),
        "followers": int(r.paretovariate(0.9)),
        "following": r.randint(10, 900),
        "pinned": _post(s) if r.random() < 0.3 else None,
    }


def _req_search(s: Session) -> Json:
    return {"q": " ".join(s.rng.choices(_WORDS, k=2)), "type": s.rng.choice(["top", "people"])}


def _resp_search(s: Session) -> Json:
    r = s.rng
    return {
        "users": [_user(s) for _ in range(r.randint(0, 2))],
        "posts": [_post(s) for _ in range(r.randint(0, 2))],
    }


def _req_notif(s: Session) -> Json:
    return {"unreadOnly": True}


def _resp_notif(s: Session) -> Json:
    r = s.rng
    kinds = ("like", "follow", "reply", "mention")
    return {
        "items": [
            {
                "type": r.choice(kinds),
                "actor": _user(s, known=False),
                "at": s.clock_ms // 1000 - r.randint(0, 7200),
            }
            for _ in range(r.randint(0, 3))
        ],
        "unreadCount": r.randint(0, 40),
    }


def _req_presence(s: Session) -> Json:
    return {"status": s.rng.choice(["online", "away"])}


def _resp_ok(s: Session) -> Json:
    return {"ok": True}


def _push_message(s: Session) -> Json:
    r = s.rng
    return {
        "type": "message",
        "conversationId": s.facts["conversation"],
        "from": _user(s, known=False),
        "text": _text(r, 2, 16),
        "sentAt": s.clock_ms // 1000,
    }


def _push_like(s: Session) -> Json:
    return {"type": "like", "postId": f"p_{base62(s.rng, 12)}", "actor": _user(s, known=False)}


def _push_follow(s: Session) -> Json:
    return {
        "type": "follow",
        "actor": _user(s, known=False),
        "followersNow": s.rng.randint(10, 5000),
    }


def _jwt(rng: random.Random, user_id: str, iat: int) -> str:
    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = part(b'{"alg":"ES256","typ":"JWT"}')
    claims = json.dumps({"sub": user_id, "iat": iat, "exp": iat + 3600, "scp": "app"}).encode()
    return f"{header}.{part(claims)}.{part(rng.randbytes(64))}"


class SocialApp:
    name = "social"
    description = "Chirp: social feed and chat, English, identity headers on every request"
    operations = (
        Operation("feed.home", _req_feed, _resp_feed),
        Operation("post.like", _req_like, _resp_like),
        Operation("dm.send", _req_send, _resp_send),
        Operation("notifications.list", _req_notif, _resp_notif),
        Operation("post.get", _req_post, _resp_post),
        Operation("dm.inbox", _req_inbox, _resp_inbox),
        Operation("profile.get", _req_profile, _resp_profile),
        Operation("search.query", _req_search, _resp_search),
        Operation("presence.set", _req_presence, _resp_ok),
    )
    launch_ops = ("feed.home", "notifications.list", "dm.inbox")
    push_kinds = (
        PushKind("dm.message", 6.0, _push_message),
        PushKind("activity.like", 3.0, _push_like),
        PushKind("activity.follow", 1.0, _push_follow),
    )

    def new_session(self, rng: random.Random) -> Session:
        clock = _BASE_MS + rng.randint(0, 30 * 86_400_000)
        user_id = f"u_{base62(rng, 10)}"
        os_name = weighted(rng, (("iOS", 0.55), ("Android", 0.45)))
        version = f"{rng.randint(5, 7)}.{rng.randint(0, 30)}.{rng.randint(0, 9)}"
        agent = (
            f"Chirp/{version} (iPhone; iOS 17.{rng.randint(0, 6)}; Scale/3.00)"
            if os_name == "iOS"
            else f"Chirp/{version} (Android {rng.randint(11, 15)}; Pixel {rng.randint(5, 9)})"
        )
        return Session(
            rng,
            clock,
            {
                "authorization": "Bearer " + _jwt(rng, user_id, clock // 1000),
                "user-agent": agent,
                "x-device-id": uuid4(rng),
                "accept-language": weighted(
                    rng, (("en-US,en;q=0.9", 0.7), ("en-GB,en;q=0.8", 0.3))
                ),
                "conversation": f"c_{base62(rng, 10)}",
            },
        )

    def request_headers(self, s: Session, op: Operation) -> Headers:
        f = s.facts
        headers = [
            ["authorization", f["authorization"]],
            ["x-request-id", uuid4(s.rng)],
            ["x-client-time", str(s.clock_ms // 1000)],
            ["user-agent", f["user-agent"]],
            ["x-device-id", f["x-device-id"]],
            ["accept-language", f["accept-language"]],
        ]
        if op.name.startswith("feed") and "etag" in f:
            headers.append(["if-none-match", f["etag"]])
        return headers

    def response_headers(self, s: Session, op: Operation, request: Headers) -> Headers:
        r = s.rng
        s.facts["etag"] = f'W/"{hex_digits(r, 16)}"'
        headers = [
            ["x-request-id", request[1][1]],
            ["x-ratelimit-remaining", str(r.randint(0, 900))],
            ["content-type", "application/json; charset=utf-8"],
        ]
        if op.name.startswith(("feed", "profile")):
            headers.append(["etag", s.facts["etag"]])
        return headers

    def response_envelope(self, s: Session, op: Operation, data: Json) -> tuple[int, Json]:
        roll = s.rng.random()
        if roll < 0.01:
            return int(ErrorCode.RATE_LIMITED), {"error": {"code": "rate_limited", "retryIn": 30}}
        if roll < 0.03:
            return 0, {"error": {"code": "not_found", "message": "That post is gone."}}
        return 0, data

    def push_headers(self, s: Session, kind: PushKind) -> Headers:
        headers = [["x-sent-at", str(s.clock_ms // 1000)]]
        if kind.topic == "dm.message":
            headers.append(["collapse-key", "dm-" + s.facts["conversation"]])
        return headers

    def push_message_id(self, s: Session) -> str:
        return hex_digits(s.rng, 24)
