"""Prometheus metrics of one proxy process, served on the admin port.

Each proxy owns its registry (tests may run several in one process). Labelled
children are looked up once and kept, because ``labels()`` takes a lock and
the statement path calls these once per statement.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class ProxyMetrics:
    """The proxy's counters, gauges and histograms."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.sessions_active = Gauge(
            "steward_sessions_active", "Client sessions currently open.", registry=r
        )
        self.sessions = Counter(
            "steward_sessions", "Client sessions by outcome of sign-in.", ["outcome"], registry=r
        )
        self.statements = Counter(
            "steward_statements",
            "Statements by command tag and policy decision.",
            ["command", "decision"],
            registry=r,
        )
        self.bytes = Counter(
            "steward_bytes", "Bytes relayed, by direction.", ["direction"], registry=r
        )
        self.errors = Counter("steward_errors", "Errors by kind.", ["kind"], registry=r)
        self.latency = Histogram(
            "steward_statement_duration_seconds",
            "Time from a statement reaching the proxy to its completion upstream.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._statement_children: dict[tuple[str, str], Counter] = {}
        self.bytes_from_client = self.bytes.labels("client_to_upstream")
        self.bytes_from_upstream = self.bytes.labels("upstream_to_client")

    def statement(self, command: str, decision: str, seconds: float | None) -> None:
        key = (command, decision)
        child = self._statement_children.get(key)
        if child is None:
            child = self._statement_children[key] = self.statements.labels(command, decision)
        child.inc()
        if seconds is not None:
            self.latency.observe(seconds)

    def error(self, kind: str) -> None:
        self.errors.labels(kind).inc()
