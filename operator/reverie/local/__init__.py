"""Local mode: one whole sleep cycle on this machine, no cluster.

The same pure planner that drives the operator decides what happens next; phases
run as local processes (``reverie run-step <step> --config <file>``) that get the
same :class:`~reverie.core.contract.AttemptConfig` a Job would.  The cycle, the
lineage and the launched processes live in ``<run dir>/.reverie/state.json``
(written atomically), so ``Ctrl-C`` and running the same command again resumes.

- :mod:`reverie.local.project`  reads a run directory (SleepCycle + ModelLineage).
- :mod:`reverie.local.state`    the state file.
- :mod:`reverie.local.executor` phases as subprocesses: launch, observe, interrupt.
- :mod:`reverie.local.progress` the workloads' JSON-lines progress, for humans.
- :mod:`reverie.local.runner`   the loop: observe → plan → act, until the cycle ends.
"""
