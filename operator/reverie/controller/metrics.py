"""Prometheus metrics of the operator, one prefix (``reverie_``).

Names follow Prometheus conventions (base units, ``_total`` counters, ``_info``
pseudo-metrics) and mirror controller-runtime's reconcile metrics so stock
operator dashboards read naturally.  Labels stay low-cardinality: cycle names
appear only on the per-cycle phase gauge, which is removed when a cycle ends
or is deleted.  The Helm chart's dashboards and alerts query exactly these.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from reverie import __version__
from reverie.api.sleepcycle import TERMINAL_PHASES, Step, StepResult

REGISTRY = CollectorRegistry(auto_describe=True)

_DURATION_BUCKETS = (1, 5, 15, 30, 60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400, 172800)
_RECONCILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

build_info = Gauge("reverie_build_info", "Operator build information.", ["version"], registry=REGISTRY)
build_info.labels(version=__version__).set(1)

# --- cycles --------------------------------------------------------------
cycles_total = Counter(
    "reverie_cycles_total",
    "Sleep cycles that reached a terminal phase, by outcome (Succeeded, Rejected, Failed).",
    ["namespace", "lineage", "outcome"],
    registry=REGISTRY,
)
cycle_phase = Gauge(
    "reverie_cycle_phase",
    "1 for the current phase of each live cycle (one series per cycle and phase).",
    ["namespace", "lineage", "cycle", "phase"],
    registry=REGISTRY,
)
cycle_duration_seconds = Histogram(
    "reverie_cycle_duration_seconds",
    "Wall time of finished cycles, first Job to terminal phase.",
    ["outcome"],
    buckets=_DURATION_BUCKETS,
    registry=REGISTRY,
)
phase_duration_seconds = Histogram(
    "reverie_phase_duration_seconds",
    "Wall time of finished step attempts (Job created to Job finished).",
    ["step", "result"],
    buckets=_DURATION_BUCKETS,
    registry=REGISTRY,
)
phase_queue_wait_seconds = Histogram(
    "reverie_phase_queue_wait_seconds",
    "Time a step attempt waited between Job creation and its pods starting (Kueue admission, scheduling).",
    ["step"],
    buckets=_DURATION_BUCKETS,
    registry=REGISTRY,
)
phase_attempts_total = Counter(
    "reverie_phase_attempts_total",
    "Step attempts started (Jobs created).",
    ["step"],
    registry=REGISTRY,
)
phase_retries_total = Counter(
    "reverie_phase_retries_total",
    "Step attempts that failed and were retried, by reason.",
    ["step", "reason"],
    registry=REGISTRY,
)
phase_failures_total = Counter(
    "reverie_phase_failures_total",
    "Step attempts that failed, by reason.",
    ["step", "reason"],
    registry=REGISTRY,
)

# --- gate and lineage -----------------------------------------------------
gate_decisions_total = Counter(
    "reverie_gate_decisions_total",
    "Gate decisions by outcome (Passed, Failed, Inconclusive).",
    ["namespace", "lineage", "outcome"],
    registry=REGISTRY,
)
eval_score = Gauge(
    "reverie_eval_score",
    "Latest evaluation score, for the candidate and the champion it was compared with.",
    ["namespace", "lineage", "metric", "role"],
    registry=REGISTRY,
)
champion_info = Gauge(
    "reverie_champion_info",
    "1 for the current champion generation of each lineage.",
    ["namespace", "lineage", "generation"],
    registry=REGISTRY,
)
champion_generation = Gauge(
    "reverie_champion_generation",
    "Number of the champion generation (gen-N -> N), for timelines.",
    ["namespace", "lineage"],
    registry=REGISTRY,
)
promotions_total = Counter(
    "reverie_promotions_total",
    "Candidates promoted to champion.",
    ["namespace", "lineage"],
    registry=REGISTRY,
)
rollbacks_total = Counter(
    "reverie_rollbacks_total",
    "Rollbacks to an earlier generation.",
    ["namespace", "lineage"],
    registry=REGISTRY,
)
last_promotion_timestamp_seconds = Gauge(
    "reverie_last_promotion_timestamp_seconds",
    "Unix time of the last champion change.",
    ["namespace", "lineage"],
    registry=REGISTRY,
)

# --- the memory inbox (lineages with spec.memory.inbox) --------------------
inbox_memories = Gauge(
    "reverie_inbox_memories",
    "Memories in the lineage's inbox that its champion has not slept on.",
    ["namespace", "lineage"],
    registry=REGISTRY,
)
inbox_oldest_memory_age_seconds = Gauge(
    "reverie_inbox_oldest_memory_age_seconds",
    "Age of the oldest memory waiting in the inbox (0 when none waits).",
    ["namespace", "lineage"],
    registry=REGISTRY,
)
inbox_max_per_sleep = Gauge(
    "reverie_inbox_max_per_sleep",
    "Memories one sleep of the lineage takes at most (spec.memory.inbox.maxPerSleep).",
    ["namespace", "lineage"],
    registry=REGISTRY,
)
skipped_sleeps_total = Counter(
    "reverie_skipped_sleeps_total",
    "Scheduled sleeps not started, by reason (NothingToConsolidate: the inbox held nothing new).",
    ["namespace", "lineage", "reason"],
    registry=REGISTRY,
)

# --- the cost of a sleep (a lineage's last consolidation) ------------------
sleep_stage_seconds = Gauge(
    "reverie_sleep_stage_seconds",
    "Seconds the lineage's last consolidation spent per stage (selfstudy: synthesis and teacher passes; "
    "replay_probe: scoring earlier memories for replay; training: the optimiser steps).",
    ["namespace", "lineage", "stage"],
    registry=REGISTRY,
)
sleep_replay_items = Gauge(
    "reverie_sleep_replay_items",
    "Earlier sleeps' items the lineage's last consolidation replayed (spec.consolidation.replay.items caps it).",
    ["namespace", "lineage"],
    registry=REGISTRY,
)
sleep_replay_bytes = Gauge(
    "reverie_sleep_replay_bytes",
    "Bytes of cached teacher targets the lineage's last consolidation replayed.",
    ["namespace", "lineage"],
    registry=REGISTRY,
)

# --- operator health (controller-runtime style) ----------------------------
reconcile_total = Counter(
    "reverie_reconcile_total",
    "Reconciles by controller and result (success, error, requeue).",
    ["controller", "result"],
    registry=REGISTRY,
)
reconcile_errors_total = Counter(
    "reverie_reconcile_errors_total",
    "Reconciles that raised an error.",
    ["controller"],
    registry=REGISTRY,
)
reconcile_duration_seconds = Histogram(
    "reverie_reconcile_duration_seconds",
    "Time spent in one reconcile.",
    ["controller"],
    buckets=_RECONCILE_BUCKETS,
    registry=REGISTRY,
)


# --- series that exist from the start --------------------------------------
# A labelled series appears when first used, already at 1, so rate() and
# increase() never see its first event (and a histogram quantile stays NaN).
# Label values from small fixed sets are created at zero up front instead.
for _step in Step:
    phase_attempts_total.labels(step=_step.value)
    phase_queue_wait_seconds.labels(step=_step.value)
    for _result in (StepResult.SUCCEEDED, StepResult.FAILED):
        phase_duration_seconds.labels(step=_step.value, result=_result.value)
for _outcome in TERMINAL_PHASES:
    cycle_duration_seconds.labels(outcome=_outcome.value)
