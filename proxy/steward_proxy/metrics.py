"""Prometheus metrics of one proxy process, served on the admin port.

The relay loop counts into plain integers and lists, which cost a fraction of
``prometheus_client``'s locked counters; a collector turns them into metric
families when ``/metrics`` is scraped. Each proxy owns its registry, so tests
may run several in one process.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

# Why a sign-in was refused, beyond the authentication reasons (auth.base.REASONS):
# by SQLSTATE, so the label's values stay a small fixed set.
_REFUSAL_REASONS = {
    "28000": "no_policy",
    "3D000": "database",
    "53300": "too_many_connections",
    "08001": "upstream",
    "08004": "rejected",
    "08P01": "protocol",
    "0A000": "unsupported",
    "57P01": "shutting_down",
    "58030": "audit",
}

MAX_REFUSAL_SERIES = 1000

AUDIT_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1)

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class ProxyMetrics:
    """The proxy's counters; read by :class:`_Collector` at scrape time."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.sessions_active = 0
        self.sessions: Counter[str] = Counter()  # by sign-in outcome
        self.pending_connections = 0  # connected, startup packet not yet complete
        self.pending_evicted = 0  # pending connections closed at --max-pending-connections
        self.statements: Counter[tuple[str, str]] = Counter()  # by (command, decision)
        self.bytes_from_client = 0
        self.bytes_from_upstream = 0
        self.mask_jobs = 0  # runs of rows sent to masking workers
        self.mask_job_bytes = 0
        self.errors: Counter[str] = Counter()
        self.sign_in_failures: Counter[str] = Counter()  # by reason
        self.latency_buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.audit_records: Counter[str] = Counter()  # by record type
        self.refusals: Counter[tuple[str, str, str]] = Counter()  # (decision, policy, rule)
        self.audit_failures = 0
        self.audit_buckets = [0] * (len(AUDIT_BUCKETS) + 1)
        self.audit_seconds = 0.0
        self.registry = registry or CollectorRegistry()
        self.registry.register(_Collector(self))
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, memory, fds

    def statement(self, command: str, decision: str, seconds: float | None) -> None:
        self.statements[(command, decision)] += 1
        if seconds is not None:
            self.latency_buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
            self.latency_sum += seconds

    def audit_write(
        self, records: Iterable[tuple[str, Mapping[str, Any]]], seconds: float, ok: bool
    ) -> None:
        """One write to the audit trail (one or more records) and how long it took.

        Refused statements are counted by decision, policy and rule as their
        records name them: names from the loaded policies, so a bounded set
        (capped at :data:`MAX_REFUSAL_SERIES` all the same).
        """
        if not ok:
            self.audit_failures += 1
        else:
            for kind, fields in records:
                self.audit_records[kind] += 1
                decision = fields.get("decision")
                if kind == "statement" and decision in ("deny", "review"):
                    key = (decision, fields.get("policy") or "", fields.get("rule") or "")
                    if key not in self.refusals and len(self.refusals) >= MAX_REFUSAL_SERIES:
                        key = (decision, "other", "other")
                    self.refusals[key] += 1
        self.audit_buckets[bisect_left(AUDIT_BUCKETS, seconds)] += 1
        self.audit_seconds += seconds

    def error(self, kind: str) -> None:
        self.errors[kind] += 1

    def sign_in_failed(self, refusal: Exception) -> None:
        """Count a refused sign-in by its reason (a bounded set of names)."""
        reason = getattr(refusal, "reason", None)
        if reason is None:
            reason = _REFUSAL_REASONS.get(getattr(refusal, "sqlstate", ""), "other")
        self.sign_in_failures[reason] += 1


class _Collector:
    def __init__(self, metrics: ProxyMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        yield GaugeMetricFamily(
            "steward_sessions_active", "Client sessions currently open.", value=m.sessions_active
        )
        sessions = CounterMetricFamily(
            "steward_sessions", "Client sessions by outcome of sign-in.", labels=["outcome"]
        )
        for outcome in ("accepted", "refused"):
            sessions.add_metric([outcome], m.sessions[outcome])
        yield sessions
        yield GaugeMetricFamily(
            "steward_pending_connections",
            "Client connections that have not yet sent a complete startup packet.",
            value=m.pending_connections,
        )
        yield CounterMetricFamily(
            "steward_pending_connections_evicted",
            "Pending connections closed because --max-pending-connections was reached.",
            value=m.pending_evicted,
        )
        statements = CounterMetricFamily(
            "steward_statements",
            "Statements by command tag and policy decision.",
            labels=["command", "decision"],
        )
        for (command, decision), count in sorted(m.statements.items()):
            statements.add_metric([command, decision], count)
        yield statements
        relayed = CounterMetricFamily(
            "steward_bytes", "Bytes relayed, by direction.", labels=["direction"]
        )
        relayed.add_metric(["client_to_upstream"], m.bytes_from_client)
        relayed.add_metric(["upstream_to_client"], m.bytes_from_upstream)
        yield relayed
        yield CounterMetricFamily(
            "steward_mask_jobs",
            "Runs of rows masked by worker processes (--mask-workers).",
            value=m.mask_jobs,
        )
        yield CounterMetricFamily(
            "steward_mask_job_bytes",
            "Bytes of rows sent to masking worker processes.",
            value=m.mask_job_bytes,
        )
        failures = CounterMetricFamily(
            "steward_sign_in_failures",
            "Refused sign-ins by reason (authentication, policy, upstream, ...).",
            labels=["reason"],
        )
        for reason, count in sorted(m.sign_in_failures.items()):
            failures.add_metric([reason], count)
        yield failures
        errors = CounterMetricFamily("steward_errors", "Errors by kind.", labels=["kind"])
        for kind, count in sorted(m.errors.items()):
            errors.add_metric([kind], count)
        yield errors
        yield HistogramMetricFamily(
            "steward_statement_duration_seconds",
            "Time from a statement reaching the proxy to its completion upstream.",
            buckets=_cumulative(LATENCY_BUCKETS, m.latency_buckets),
            sum_value=m.latency_sum,
        )
        refusals = CounterMetricFamily(
            "steward_refusals",
            "Statements refused or held for review, by the policy and rule that decided.",
            labels=["decision", "policy", "rule"],
        )
        for (decision, policy, rule), count in sorted(m.refusals.items()):
            refusals.add_metric([decision, policy, rule], count)
        yield refusals
        records = CounterMetricFamily(
            "steward_audit_records", "Audit records written, by type.", labels=["type"]
        )
        for kind, count in sorted(m.audit_records.items()):
            records.add_metric([kind], count)
        yield records
        yield CounterMetricFamily(
            "steward_audit_write_failures",
            "Writes to the audit trail that failed (the proxy then refuses sessions).",
            value=m.audit_failures,
        )
        yield HistogramMetricFamily(
            "steward_audit_write_duration_seconds",
            "Time one write to the audit trail took (one or more records).",
            buckets=_cumulative(AUDIT_BUCKETS, m.audit_buckets),
            sum_value=m.audit_seconds,
        )


def _cumulative(bounds: tuple[float, ...], counts: list[int]) -> list[tuple[str, int]]:
    buckets = []
    total = 0
    for bound, count in zip((*bounds, float("inf")), counts, strict=True):
        total += count
        buckets.append((str(bound) if bound != float("inf") else "+Inf", total))
    return buckets


class MeteredAudit:
    """An audit sink that counts and times every write into :class:`ProxyMetrics`."""

    def __init__(self, sink: Any, metrics: ProxyMetrics) -> None:
        self.sink = sink
        self.metrics = metrics

    def write(self, type: str, **fields: Any) -> dict[str, Any]:
        start = time.perf_counter()
        ok = False
        try:
            record = self.sink.write(type, **fields)
            ok = True
            return record  # type: ignore[no-any-return]
        finally:
            self.metrics.audit_write(((type, fields),), time.perf_counter() - start, ok)

    def write_many(self, records: Iterable[tuple[str, Mapping[str, Any]]]) -> list[dict[str, Any]]:
        if not isinstance(records, list):
            records = list(records)
        start = time.perf_counter()
        ok = False
        try:
            written = self.sink.write_many(records)
            ok = True
            return written  # type: ignore[no-any-return]
        finally:
            self.metrics.audit_write(records, time.perf_counter() - start, ok)
