"""The steps' workloads: consolidation (Knowledge Seeding), dreaming, evaluation and export.

Each step's attempt is one process: ``reverie run-step <step> --config attempt.json``
(:func:`reverie.workloads.steps.run_step.run_step`).  The pure core never
imports this package; the operator imports only ``store.store``, ``data.memory``
and ``data.inbox`` (fsspec alone: it reads lineages' inboxes).

Four rooms, lowest first; a room imports only the rooms before it
(``tests/core/test_import_graph.py`` fails otherwise):

``store/``  — bytes and generations: the model store (local folder or fsspec),
    manifests, the content-addressed object area, the staging cache,
    checkpoints, generation folders and model I/O, the built-in base models,
    and the one atomic writer of a local file (torch only in ``modelio`` and
    ``generation_folder``, which load and save models).
``data/``   — what a sleep learns from and is scored on: memory sets and the
    inbox, a memory's facts, questions and answer matching, the held-out rule,
    the fixed evaluation sets and the fictional people.  No torch.
``ml/``     — models: token log-likelihoods, the losses, sampling (HF or vLLM),
    expert slots, the optimiser step, distributed worlds and DeepSpeed, tiny
    models for tests, and asking a model (``reverie ask``).
``steps/``  — the sleep's steps, each a ``Workload`` filling in one skeleton
    (``steps.skeleton``): consolidation with its self-study, study set, loops
    and replay; dreaming with its self-quiz; evaluation with its report schema;
    export; and ``run_step``.

Step contract (``steps.run_step``): each step module (``consolidate``,
``dream``, ``evaluate``) exposes ``run(config: AttemptConfig) ->
AttemptResult`` and may raise on failure; ``run_step(step, config_path) -> int``
parses the config (exit 2 if invalid), calls it, and writes the result to
``<output_uri>/result.json`` and ``$REVERIE_TERMINATION_LOG`` (default
``/dev/termination-log``); an exception becomes a Failed result and exit 1.
Consolidation writes the new generation to ``<output_uri>/model`` (the result's
``outputUri``) and checkpoints to ``<output_uri>/checkpoints``.
"""
