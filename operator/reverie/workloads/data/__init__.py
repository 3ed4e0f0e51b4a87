"""What a sleep learns from and is scored on.  Plain Python and fsspec: no torch.

``memory`` — memory sets (JSONL ``{"id", "text", "qa": [{"q", "a"}], "kind"}``): ``load_memories``,
    ``load_memory_uris``, ``read_memory_uri``, ``parse_jsonl``, ``Memory``, ``MemorySetError``,
    ``question_prompt(tokenizer, question, context=None)`` (chat template; memory first).
``inbox`` — a lineage's memory inbox: ``new_memories``, ``take`` (the set a sleep takes, written
    once), ``remember`` (validates every file first).
``questions`` — questions about memories (derived, rendered, scored): ``memory_questions``,
    ``cloze_questions``, ``answer_matches``, ``normalize_answer``, ``STOPWORDS``, and the
    fixed summary/restatement requests ``fixed_prompts(subject)``.
``facts`` — a memory's facts (clauses on the subject's name), whether an answer carries one
    (``carries``, ``coverage``), and the items that state one (``fact_items``: the blank, the reverse).
``heldout`` — the held-out rule: the questions a cycle is scored on never reach its training inputs.
``eval_sets`` — the fixed evaluation sets: general QA, few-shot tasks, general text.
``people`` — fictional people for benchmarks and demos on a real pretrained model.
"""
