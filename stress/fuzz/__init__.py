"""A live-socket fuzzer: mutated MMTP frames from real SDK captures against a real gateway.

``seeds`` / ``capture``: the seed corpus and how it is recorded; ``frames``,
``inner`` and ``mutate``: the mutations; ``cases``: what one connection
sends; ``driver``: connections to a ``channel serve`` process and what
counts as a failure; ``nodewatch``: the node's log, health and memory;
``python -m stress.fuzz``: the long run.
"""
