"""The Embedding service's operational events: one JSON log line each (`sekha_runtime.events`).

One `EventLog` for the process, like a logger: the router connection (`router_vectors`), the
vector store (`store`) and migrations (`migration`, `service`) write to it; `build_server` sets
its window from `telemetry.event_log_window_s` and flushes it at stop. Events: router_unreachable
/ router_reachable / router_embed_failed, chroma_error / chroma_recovered, migration_started /
migration_progress / migration_finished / migration_paused / migration_failed /
migration_verify_mismatch, and config_reloaded (from the reloader).
"""

from __future__ import annotations

from sekha_runtime.events import EventLog

__all__ = ["EVENTS"]

EVENTS = EventLog("embedding_service.events")
