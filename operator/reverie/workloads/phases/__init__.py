"""The sleep's steps, each one process: ``run(config: PhaseConfig) -> PhaseResult``.

``consolidate`` — Knowledge Seeding: in-context memories into a new expert slot (paper §2.4).
``selfstudy`` — the teacher writes consolidation's curriculum from each memory (the paper's set D)
    and its top-k targets, cached beside the generation.
``replay`` — what a sleep rehearses of earlier sleeps: a fixed budget of their stored items,
    chosen by what the champion is losing, their cached targets reused.
``dream`` — dreaming (paper §2.5): a curriculum at the facts the consolidated model still gets wrong,
    kept when an isolated update on it helps.
``selfquiz`` — dreaming's label-free self-quiz: span agreement with the teacher's reading, weak facts,
    the items aimed at them.
``evaluate`` / ``eval_schema`` — score the candidate and the champion on the gate's suites; the report.
``export`` — servable forms of a generation (merged weights, LoRA adapters).
``run_phase`` — ``reverie run-phase <step> --config phase.json``: run one phase, report its result.
"""
