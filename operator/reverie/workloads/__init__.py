"""Phase workloads: consolidation (Knowledge Seeding), dreaming and evaluation.

Each phase is one process: ``reverie run-phase <step> --config phase.json``
(:func:`reverie.workloads.run_phase.run_phase`).  Modules import torch and
transformers; the pure core never imports this package, and the operator only
``inbox``, ``memory`` and ``store`` (fsspec alone: it reads lineages' inboxes).

Shared building blocks (stable interfaces; other phases build on them):

``tiny`` — no-download models and fictional facts for tests and demos.
    ``make_world(n, seed=, attributes=("city","pet"), values_per_attribute=16) -> FactWorld``
    (``.entities``, ``.facts: list[Fact]``, ``.facts_of(entities)``); ``Fact(entity, attribute, value)``
    with ``.question``, ``.answer``, ``.sentence``; ``memory_records(facts) -> list[dict]`` (one
    document per person, with ``qa``); ``write_memories_jsonl(path, records)``;
    ``build_tokenizer(corpus) -> Qwen2Tokenizer`` (ChatML, pad ``<|pad|>``, eos ``<|im_end|>``, left
    padding); ``build_tiny_model(tokenizer, seed=, hidden_size=64, ...)``;
    ``pretrain(model, tokenizer, facts=, mention_entities=, steps=)``; ``sft_batch_loss(model,
    tokenizer, [(prompt, completion)])``;
    ``build_base_generation(folder, seed=0, n_old=16, n_new=(8, 8), attributes=("city",)) -> TinyBase``
    (``.folder``, ``.world``, ``.old: list[Fact]`` known closed-book, ``.new: list[list[Fact]]``
    unknown, one list per later wake session).

``modelio`` — generations on disk (HF folder + ``slots.json`` + ``slots/<name>/`` PEFT adapters).
    ``load_generation(uri, dtype=, trainable=False) -> Generation`` (``.model`` — a ``PeftModel``
    when it has slots, all active and frozen —, ``.tokenizer``, ``.slots``, ``.folder``);
    ``save_generation(model, tokenizer, uri, slots=None, ledger=None, objects_uri=None) -> Path`` (atomic;
    with ``objects_uri`` a thin generation over that object area);
    ``content_hash(folder) -> "sha256:..."``; ``stage_in(uri) -> Path``; ``stage_out(folder, uri)``
    (a generation is committed by its manifest, written last); ``publish_generation(folder, uri)``;
    ``activate_slots(peft_model, names)``.  ``generation_folder`` below it writes one local
    folder of that layout atomically (``write_generation_folder``), also for converting ``builtin:`` models.

The store: ``store`` (fsspec trees: ``upload_tree`` with pointer files last, ``download_tree``,
``list_tree``), ``manifest`` (a generation's files, sha256s and content hash: its commit marker;
version 2 marks the files kept in the object area), ``objects`` (the lineage's content-addressed
object area ``<store>/<lineage>/objects/sha256/<hex>``: ``area(store, lineage)``, ``commit(folder, uri,
area_uri=)`` writes a thin generation, ``sweep(lineage_uri, grace_s=)`` reclaims unreferenced objects),
``staging`` (the staging cache: ``stage_generation(uri, cache=StagingCache.from_env())`` for store
URIs and ``hf://org/model[@revision]``, verified, evicted by size), ``atomic`` (the one atomic
writer of a local file: ``write_atomic(path, text_or_bytes)``, ``replacing(path)``; ``store.write_text``
uses it on a local store).

``memory`` — memory sets (JSONL: ``{"id", "text", "qa": [{"q", "a"}], "kind"}``).
    ``load_memories(MemorySpec | [MemorySource], store_uri=) -> list[Memory]``;
    ``load_memory_uris(uris, store_uri=)``; ``read_memory_uri(uri)``; ``parse_jsonl(text, source=)``;
    ``Memory(id, text, qa: tuple[QA(q, a)], kind)``; ``MemorySetError``;
    ``question_prompt(tokenizer, question, context=None) -> str`` (chat template; memory first).

``inbox`` — a lineage's memory inbox (``*.jsonl`` dropped under ``spec.memory.inbox``; ``id`` optional,
    :func:`~reverie.workloads.memory.content_id` otherwise).  ``new_memories(inbox_uri, slept_uris, limit=)
    -> (NewMemories(taken, waiting), problems)``; ``take(inbox_uri=, slept_uris=, limit=, set_uri=, now=)
    -> MemorySetStatus`` (written once); ``remember(inbox_uri, [path])`` (validates every file first).

``generation`` — one interface for HF ``generate`` (CPU) and vLLM (GPU).
    ``SamplingBackend.generate(prompts, *, max_new_tokens, temperature (0 = greedy), top_p, stop,
    seed, return_logprobs, adapters=None (keep) | [] (base only) | [slot names], noise_scale=0.0
    (random extra expert)) -> Generated(texts, token_ids, logprobs)``;
    ``make_backend("hf" | "vllm", model, tokenizer, folder=, slots=)``; ``HFBackend``; ``VLLMBackend``;
    context managers ``active_adapters(model, names)`` and ``random_expert(model, scale=, seed=)``.

Consolidation: ``expansion`` (a new LoRA expert slot per sleep), ``consolidate`` (the
Knowledge Seeding loop and losses), ``deepspeed_config``, ``checkpoint``.

Phase contract (``run_phase``): each phase module (``consolidate``, ``dream``, ``evaluate``)
exposes ``run(config: PhaseConfig) -> PhaseResult`` and may raise on failure;
``run_phase(step, config_path) -> int`` parses the config (exit 2 if invalid), calls it,
and writes the result to ``<output_uri>/result.json`` and ``$REVERIE_TERMINATION_LOG``
(default ``/dev/termination-log``); an exception becomes a Failed result and exit 1.
Consolidation writes the new generation to ``<output_uri>/model`` (the result's
``outputUri``) and checkpoints to ``<output_uri>/checkpoints``.
"""
