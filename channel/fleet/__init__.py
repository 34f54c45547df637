"""A local fleet in network namespaces: gateway nodes, HAProxy, Redis Cluster, Prometheus.

``channel fleet up`` runs one by hand; the chaos and rolling-upgrade tests and
``stress/fleet_chaos.py`` drive one from code (``Fleet``). Linux and root only.
"""

from channel.fleet.fleet import Fleet, FleetNode, FleetSettings
from channel.fleet.netns import FleetError

__all__ = ["Fleet", "FleetError", "FleetNode", "FleetSettings"]
