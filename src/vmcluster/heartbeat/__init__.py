"""Heartbeats over every cluster network: route detection (pure) and the UDP daemon."""

from vmcluster.heartbeat.detector import (
    HeartbeatParams,
    RouteChange,
    RouteTracker,
    health_from_views,
    heartbeat_plan,
    isolated,
    network_states,
    peers_down,
)

__all__ = [
    "HeartbeatParams",
    "RouteChange",
    "RouteTracker",
    "health_from_views",
    "heartbeat_plan",
    "isolated",
    "network_states",
    "peers_down",
]
