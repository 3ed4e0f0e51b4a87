"""``reverie remember``: put memories into a lineage's inbox, on a cluster or in a local run directory.

Each file is validated whole (a malformed line is refused with its line number
and field, and nothing is written) and written into the inbox as one new file;
the next sleep of the lineage consolidates what its champion has not slept on.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from reverie.cli.app import KubeconfigOpt, NamespaceOpt, app, console, fail
from reverie.cli.cluster import cluster_lineage


@app.command()
def remember(
    args: Annotated[
        list[str],
        typer.Argument(help="DIR FILE... (a local run directory, then JSONL files), or with --lineage only the files."),
    ],
    lineage: Annotated[
        str | None,
        typer.Option("--lineage", "-l", help="Write into the inbox of this ModelLineage on the cluster."),
    ] = None,
    namespace: NamespaceOpt = None,
    kubeconfig: KubeconfigOpt = None,
) -> None:
    """Validate JSONL memories and write them into the lineage's inbox (spec.memory.inbox), a file per FILE.

    One memory per line: {"text": "...", "id": "...", "qa": [{"q": "...", "a": "..."}]}; id is optional
    (a memory without one is known by its content hash, so the same text twice is one memory).

    reverie remember --lineage assistant batch-0412.jsonl   (the store must be writable from here, e.g. s3://)
    reverie remember examples/inbox notes.jsonl
    """
    from reverie.core.lineage import inbox_of
    from reverie.local.project import ProjectError, load_project
    from reverie.workloads.data.inbox import RememberError
    from reverie.workloads.data.inbox import remember as write_inbox
    from reverie.workloads.store.store import StoreError, is_remote

    if lineage is not None:
        lin, files = cluster_lineage(lineage, namespace, kubeconfig), list(args)
        where = f"ModelLineage {lin.metadata.namespace}/{lin.metadata.name}"
    else:
        if len(args) < 2:
            raise fail("give a local run directory and at least one JSONL file, or --lineage NAME and the files")
        try:
            project = load_project(Path(args[0]))
        except ProjectError as exc:
            raise fail(str(exc)) from exc
        lin = project.lineage.model_copy(deep=True)
        lin.spec.store.uri = project.store_uri
        files, where = list(args[1:]), f"the lineage {lin.metadata.name} of {project.root}"
    if not files:
        raise fail("no file given")
    inbox = inbox_of(lin)
    if inbox is None:
        raise fail(f"{where} has no inbox; set spec.memory.inbox (e.g. `inbox: {{}}` under spec.memory) first")
    if lineage is not None and lin.spec.store.pvc_name and not is_remote(inbox.uri):
        raise fail(
            f"the inbox {inbox.uri} is on PersistentVolumeClaim {lin.spec.store.pvc_name}, not reachable from here; "
            "copy the files there from a pod that mounts it"
        )
    if lin.spec.store.endpoint:
        os.environ.setdefault("AWS_ENDPOINT_URL_S3", lin.spec.store.endpoint)
    try:
        written = write_inbox(inbox.uri, [Path(f) for f in files])
    except RememberError as exc:
        raise fail(str(exc)) from exc
    except (StoreError, OSError) as exc:
        raise fail(f"cannot write to the inbox {inbox.uri}: {exc}") from exc
    for (uri, count), source in zip(written, files, strict=True):
        console.print(f"{source}: {count} memories → {uri}")
    console.print(f"[dim]the next sleep of {lin.metadata.name} consolidates what its champion has not slept on[/dim]")
