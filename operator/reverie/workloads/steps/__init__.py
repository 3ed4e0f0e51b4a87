"""The sleep's steps, each one process: ``run(config: AttemptConfig) -> AttemptResult``.

``skeleton`` — the one skeleton every step fills in (inputs → resume → work → write → metrics):
    ``Workload``, ``run_workload``, ``write_generation``.
``consolidate`` — the consolidation step: Knowledge Seeding of in-context memories into a new
    expert slot (paper §2.4); its result reports self-study coverage per fact.
``knowledge_seeding`` — consolidation's two training loops (self-study distillation, on-policy
    Knowledge Seeding) over one model whose roles differ by active slots.
``study_set`` — a sleep's self-study set: its own items, the replay, the cached teacher targets;
    built once per cycle, reused by every later attempt.
``selfstudy`` — the teacher writes consolidation's curriculum from each memory (the paper's set D),
    tops up thinly covered facts, and caches its top-k targets.
``replay`` — what a sleep rehearses of earlier sleeps: a fixed budget of their stored items,
    chosen by what the champion is losing, their cached targets reused.
``dream`` — the dreaming step (paper §2.5): a curriculum at the facts the consolidated model still
    gets wrong, kept when an isolated update on it helps.
``selfquiz`` — dreaming's label-free self-quiz: span agreement with the teacher's reading, weak facts,
    the items aimed at them.
``evaluate`` / ``eval_schema`` — the evaluation step: score the candidate and the champion on the
    gate's suites; the report.
``export`` — servable forms of a generation (merged weights, LoRA adapters).
``run_step`` — ``reverie run-step <step> --config attempt.json``: run one attempt, report its result.
"""
