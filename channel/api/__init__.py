"""The HTTP push API: ``channel.api.app.start_api`` serves it next to a node.

``keys`` (API keys and scopes), ``errors`` (the JSON error shape), ``openapi``
(the document at ``/openapi.json``), ``limits``; request validation is shared
with the Redis stream API in ``channel.push.requests``.
"""
