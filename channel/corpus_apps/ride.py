"""Movi: a ride-hailing app (Spanish and Portuguese, snake_case JSON).

A session cookie (``cookie: movi_sid=...; region=...``) and an uppercase
device UUID go on every request; ``req-ts`` is the client clock in ms and
``trace`` a 16-digit hex span id; the rider's position changes from request
to request; pushes are frequent small driver-location updates plus trip
status changes; bodies carry coordinates, fares and Spanish strings.
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
    digits,
    hex_digits,
    money,
    uuid4,
    weighted,
)
from channel.wire.errors import ErrorCode

_BASE_MS = 1_758_000_000_000
_CITIES = (
    ("MX-CDMX", 19.4326, -99.1332, "MXN", "es-MX"),
    ("CO-BOG", 4.7110, -74.0721, "COP", "es-CO"),
    ("BR-SAO", -23.5505, -46.6333, "BRL", "pt-BR"),
    ("AR-BUE", -34.6037, -58.3816, "ARS", "es-AR"),
    ("CL-SCL", -33.4489, -70.6693, "CLP", "es-CL"),
)
_STREETS = (
    "Av. Insurgentes Sur",
    "Calle 85",
    "Av. Paulista",
    "Av. Corrientes",
    "Av. Providencia",
    "Paseo de la Reforma",
    "Carrera 7",
    "Rua Augusta",
    "Av. Santa Fe",
    "Calle Florida",
)
_PRODUCTS = (("movi_x", "Movi X"), ("movi_comfort", "Comfort"), ("movi_moto", "Moto"))
_STATUS_TEXT = {
    "driver_assigned": "Tu conductor va en camino",
    "arriving": "Tu conductor está llegando",
    "in_progress": "Viaje en curso",
    "completed": "Llegaste a tu destino",
}


def _point(s: Session, spread: float = 0.05) -> Json:
    r = s.rng
    _, lat, lng, _, _ = s.facts["city"]
    return {
        "lat": round(lat + r.uniform(-spread, spread), 6),
        "lng": round(lng + r.uniform(-spread, spread), 6),
    }


def _place(s: Session) -> Json:
    r = s.rng
    return {
        "place_id": f"pl_{base62(r, 14)}",
        "name": f"{r.choice(_STREETS)} {r.randint(1, 3999)}",
        "location": _point(s),
    }


def _driver(s: Session) -> Json:
    r = s.rng
    return {
        "driver_id": f"drv_{digits(r, 9)}",
        "first_name": r.choice(("Carlos", "Ana", "João", "Lucía", "Mateo", "Valentina", "Diego")),
        "rating": round(r.uniform(4.5, 5.0), 2),
        "vehicle": {
            "make": r.choice(("Nissan", "Chevrolet", "Toyota", "Volkswagen", "Kia")),
            "model": r.choice(("Versa", "Onix", "Corolla", "Gol", "Rio")),
            "plate": f"{base62(r, 3).upper()}-{digits(r, 3)}",
            "color": r.choice(("Blanco", "Gris", "Negro", "Rojo")),
        },
    }


def _fare(s: Session) -> Json:
    _, _, _, currency, _ = s.facts["city"]
    scale = {"MXN": 1, "COP": 220, "BRL": 0.3, "ARS": 90, "CLP": 50}[currency]
    amount = money(s.rng, 45 * scale, 600 * scale)
    return {
        "amount": amount,
        "currency": currency,
        "surge": round(s.rng.choice([1.0, 1.0, 1.2, 1.5]), 1),
    }


def _req_estimate(s: Session) -> Json:
    return {"pickup": _point(s), "dropoff": _point(s), "product_ids": [p[0] for p in _PRODUCTS]}


def _resp_estimate(s: Session) -> Json:
    r = s.rng
    return {
        "estimates": [
            {
                "product_id": pid,
                "display_name": name,
                "eta_seconds": r.randint(60, 900),
                "fare": _fare(s),
            }
            for pid, name in _PRODUCTS
        ],
        "expires_in": 120,
    }


def _req_request(s: Session) -> Json:
    r = s.rng
    s.facts["trip"] = f"trp_{base62(r, 16)}"
    return {
        "product_id": r.choice(_PRODUCTS)[0],
        "pickup": _place(s),
        "dropoff": _place(s),
        "payment_method_id": s.facts["payment"],
        "fare_token": base62(r, 32),
    }


def _resp_request(s: Session) -> Json:
    return {
        "trip_id": s.facts.get("trip"),
        "status": "searching",
        "eta_seconds": s.rng.randint(60, 600),
    }


def _req_trip(s: Session) -> Json:
    return {"trip_id": s.facts.get("trip") or f"trp_{base62(s.rng, 16)}"}


def _resp_trip(s: Session) -> Json:
    r = s.rng
    status = r.choice(list(_STATUS_TEXT))
    return {
        "trip_id": s.facts.get("trip"),
        "status": status,
        "status_text": _STATUS_TEXT[status],
        "driver": _driver(s),
        "driver_location": _point(s, 0.01),
        "eta_seconds": r.randint(0, 900),
        "fare": _fare(s),
    }


def _req_places(s: Session) -> Json:
    return {"query": s.rng.choice(_STREETS)[:8], "near": _point(s)}


def _resp_places(s: Session) -> Json:
    return {"results": [_place(s) for _ in range(s.rng.randint(2, 5))]}


def _req_history(s: Session) -> Json:
    return {"page_size": 5, "page_token": None}


def _resp_history(s: Session) -> Json:
    r = s.rng
    return {
        "trips": [
            {
                "trip_id": f"trp_{base62(r, 16)}",
                "requested_at": s.clock_ms // 1000 - r.randint(3600, 30 * 86400),
                "pickup_name": f"{r.choice(_STREETS)} {r.randint(1, 3999)}",
                "dropoff_name": f"{r.choice(_STREETS)} {r.randint(1, 3999)}",
                "fare": _fare(s),
            }
            for _ in range(r.randint(1, 4))
        ],
        "next_page_token": base62(r, 20),
    }


def _req_cancel(s: Session) -> Json:
    return {"trip_id": s.facts.get("trip"), "reason": s.rng.choice(["changed_mind", "driver_late"])}


def _resp_cancel(s: Session) -> Json:
    return {"cancelled": True, "fee": _fare(s) if s.rng.random() < 0.2 else None}


def _req_rate(s: Session) -> Json:
    return {"trip_id": s.facts.get("trip"), "stars": s.rng.randint(3, 5), "comment": ""}


def _resp_ok(s: Session) -> Json:
    return {"ok": True}


def _push_location(s: Session) -> Json:
    return {
        "trip_id": s.facts.get("trip"),
        "location": _point(s, 0.01),
        "heading": s.rng.randint(0, 359),
        "eta_seconds": s.rng.randint(0, 600),
    }


def _push_status(s: Session) -> Json:
    status = s.rng.choice(list(_STATUS_TEXT))
    return {
        "trip_id": s.facts.get("trip"),
        "status": status,
        "title": _STATUS_TEXT[status],
        "driver": _driver(s),
    }


def _push_promo(s: Session) -> Json:
    return {
        "title": "¡20% de descuento en tu próximo viaje!",
        "code": base62(s.rng, 8).upper(),
        "valid_until": s.clock_ms // 1000 + 86400,
    }


class RideApp:
    name = "ride"
    description = "Movi: ride-hailing, Spanish/Portuguese, a session cookie on every request"
    operations = (
        Operation("ride.estimate", _req_estimate, _resp_estimate),
        Operation("trip.get", _req_trip, _resp_trip),
        Operation("places.autocomplete", _req_places, _resp_places),
        Operation("ride.request", _req_request, _resp_request),
        Operation("trips.history", _req_history, _resp_history),
        Operation("ride.cancel", _req_cancel, _resp_cancel),
        Operation("trip.rate", _req_rate, _resp_ok),
    )
    launch_ops = ("trips.history", "trip.get")
    push_kinds = (
        PushKind("driver.location", 8.0, _push_location),
        PushKind("trip.status", 3.0, _push_status),
        PushKind("marketing.promo", 0.5, _push_promo),
    )

    def new_session(self, rng: random.Random) -> Session:
        city = rng.choice(_CITIES)
        return Session(
            rng,
            _BASE_MS + rng.randint(0, 30 * 86_400_000),
            {
                "city": city,
                "cookie": f"movi_sid={base62(rng, 40)}; region={city[0]}; ab=v{rng.randint(1, 4)}",
                "device": uuid4(rng, upper=True),
                "app_version": f"4.{rng.randint(100, 140)}.{rng.randint(0, 20)}",
                "payment": f"pm_{base62(rng, 12)}",
                "lang": city[4],
            },
        )

    def request_headers(self, s: Session, op: Operation) -> Headers:
        f = s.facts
        headers = [
            ["cookie", f["cookie"]],
            ["x-movi-device", f["device"]],
            ["req-ts", str(s.clock_ms)],
            ["trace", hex_digits(s.rng, 16)],
            ["x-app-version", f["app_version"]],
            ["accept-language", f["lang"]],
        ]
        if op.name.startswith(("ride", "places")):
            p = _point(s, 0.02)
            headers.append(["x-geo", f"{p['lat']},{p['lng']}"])
        return headers

    def response_headers(self, s: Session, op: Operation, request: Headers) -> Headers:
        headers = [["trace", request[3][1]], ["server-ts", str(s.clock_ms)]]
        if s.rng.random() < 0.3:
            headers.append(["set-cookie", f"ab=v{s.rng.randint(1, 4)}; Path=/; Max-Age=86400"])
        return headers

    def response_envelope(self, s: Session, op: Operation, data: Json) -> tuple[int, Json]:
        roll = s.rng.random()
        if roll < 0.015:
            return int(ErrorCode.UNAVAILABLE), {
                "error_code": "no_drivers",
                "mensaje": "No hay conductores disponibles",
            }
        return 0, {"data": data, "meta": {"request_id": base62(s.rng, 20)}}

    def push_headers(self, s: Session, kind: PushKind) -> Headers:
        headers = [["push-ts", str(s.clock_ms)]]
        if kind.topic == "driver.location":
            headers.append(["collapse-key", "loc"])
            headers.append(["ttl", "15"])
        else:
            headers.append(["priority", weighted(s.rng, (("high", 0.7), ("normal", 0.3)))])
        return headers

    def push_message_id(self, s: Session) -> str:
        return hex_digits(s.rng, 32)
