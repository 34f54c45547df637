"""Channel against Mosquitto 2.x, the same scenarios in one run (``python -m stress.compare``).

Modules: ``procs`` (processes and /proc), ``servers`` (Mosquitto, ``channel serve``),
``clients`` (the native load generators of ``native/loadgen``), ``scenarios`` and
``unicast`` (what is measured), ``report`` (table, ratios, bars), ``plots`` (PNGs).
"""
