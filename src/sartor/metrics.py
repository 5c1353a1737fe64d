"""Prometheus metrics of the engine (the API adds request latency)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

EVENTS_ACCEPTED = Counter(
    "sartor_events_accepted_total", "Events committed to the event log.", ["type"]
)
EVENTS_DUPLICATE = Counter(
    "sartor_events_duplicate_total", "Redelivered events answered without storing."
)
EVENTS_REJECTED = Counter(
    "sartor_events_rejected_total", "Events refused as invalid, by HTTP status.", ["status"]
)
EVENTS_DROPPED = Counter(
    "sartor_events_dropped_total", "Valid events not stored, by reason.", ["reason"]
)
REQUESTS_RATE_LIMITED = Counter("sartor_requests_rate_limited_total", "Requests refused with 429.")
HTTP_LATENCY = Histogram(
    "sartor_http_request_duration_seconds",
    "HTTP request latency.",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
