"""Several synthetic apps for ``channel corpus generate --app``: distinct header naming
conventions, body shapes, languages and identity placement, so no compression figure is
tuned to one app's habits (``stress/wire_size --apps`` reports each).

=========  ====================================================================
wallet     the payment super-app of ``channel/corpus.py`` (Chinese, identity in HELLO)
social     Chirp: feed and chat, English, a JWT and identity headers on every request
ride       Movi: ride-hailing, Spanish/Portuguese, a session cookie on every request
shop       Kaimono: e-commerce, Japanese, signed requests, identity inside every body
fitness    Puls: fitness tracker, German, sensor arrays, a session cookie
=========  ====================================================================
"""

from __future__ import annotations

from collections.abc import Iterator

from channel.corpus_apps.base import AppModel, Message, generate
from channel.corpus_apps.fitness import FitnessApp
from channel.corpus_apps.ride import RideApp
from channel.corpus_apps.shop import ShopApp
from channel.corpus_apps.social import SocialApp

DEFAULT_APP = "wallet"
MODELS: dict[str, AppModel] = {
    app.name: app for app in (SocialApp(), RideApp(), ShopApp(), FitnessApp())
}
APP_NAMES = (DEFAULT_APP, *MODELS)


def generate_app_corpus(
    app: str, n_sessions: int, seed: int, push_fraction: float
) -> Iterator[Message]:
    """The messages of ``n_sessions`` sessions of ``app``, deterministically for ``seed``."""
    if app == DEFAULT_APP:
        from channel.corpus import generate_corpus

        return generate_corpus(n_sessions, seed, push_fraction)
    model = MODELS.get(app)
    if model is None:
        raise ValueError(f"unknown app {app!r}; known: {', '.join(APP_NAMES)}")
    return generate(model, n_sessions, seed, push_fraction)


def describe(app: str) -> str:
    if app == DEFAULT_APP:
        return "the payment super-app of channel/corpus.py (Chinese, identity in HELLO)"
    return MODELS[app].description
