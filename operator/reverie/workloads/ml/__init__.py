"""Models: scoring, sampling, expert slots, many processes.

``lm`` — batches and token log-likelihoods every workload trains or scores on
    (``completion_logits``, ``completion_nll``, ``text_nll``, ``sft_loss``).
``sampling`` — one interface for HF ``generate`` (CPU) and vLLM (GPU): ``SamplingBackend.generate``,
    ``make_backend("hf" | "vllm", ...)``, ``active_adapters``, ``random_expert``.
``expansion`` — the "larger self": a new low-rank expert slot per sleep; ``FoldedSlots`` adds the
    frozen earlier slots into the base weights for one sleep and restores them bit-exact.
``trainer`` — the one optimiser step (AdamW + clipping) behind the ``Trainer`` protocol: ``TorchTrainer``.
``distributed`` — phases on N processes: the world a launcher made, how work is split, who
    writes; ``DDPTrainer`` (the same step over DDP), ``ShardedSampling``.
``deepspeed_config`` — DeepSpeed ZeRO for consolidation at scale (GPU path).
``tiny`` — tiny models and fictional facts built locally in seconds, for tests, local mode and demos.
``ask`` — asking a model: ``greedy_answers`` (the one prompt format every step answers in) and
    ``reverie ask``'s questions to a lineage's champion, with or without its memories.
"""
