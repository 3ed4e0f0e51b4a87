"""Bytes and generations: where a lineage's models, checkpoints and results live.

``store`` — files in the model store, a local folder or an object store through fsspec
    (``upload_tree`` with pointer files last, ``download_tree``, ``list_tree``, ``write_text``).
``atomic`` — the one atomic writer of a local file: ``write_atomic(path, text_or_bytes)``, ``replacing(path)``.
``manifest`` — a generation's files, sha256s and content hash: its commit marker (version 2 marks
    the files kept in the object area); ``file_sha256``.
``objects`` — the lineage's content-addressed object area ``<store>/<lineage>/objects/sha256/<hex>``:
    ``area``, ``commit`` (a thin generation), ``sweep`` (reclaims unreferenced objects).
``staging`` — the staging cache: ``stage_generation(uri)`` for store URIs and
    ``hf://org/model[@revision]``, verified, evicted by size.
``generation_folder`` — one local generation folder written atomically (also for ``builtin:`` models).
``modelio`` — generations on disk (HF folder + ``slots.json`` + ``slots/<name>/`` PEFT adapters):
    ``load_generation``, ``save_generation`` (thin over an object area when given one),
    ``content_hash``, ``stage_in``/``stage_out``, ``publish_generation``, ``activate_slots``.
``pretrained`` — built-in base models shipped by a Python package (``builtin:smollm2-135m``).
``checkpoint`` — the training phases' checkpoints: atomic, resumable, only the new slot.
"""
