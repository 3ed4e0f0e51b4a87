"""The Typer application every ``reverie`` verb registers on, and the output helpers they share."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    pass

app = typer.Typer(
    name="reverie",
    help="Sleep cycles for LLMs: run one locally (`reverie sleep`), or drive them on Kubernetes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# In a pipe or a log (no terminal) a line is printed whole: rich would break it at 80 columns.
console = Console(highlight=False, soft_wrap=not sys.stdout.isatty())
err = Console(stderr=True, highlight=False, soft_wrap=not sys.stderr.isatty())

KubeconfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--kubeconfig", envvar="KUBECONFIG", help="Kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)."
    ),
]
NamespaceOpt = Annotated[
    str | None, typer.Option("--namespace", "-n", help="Namespace (default: the kubeconfig context's, else 'default').")
]


def show(table: Table) -> None:
    """Print a table; in a pipe or log (no terminal) at its natural width, never wrapped."""
    if sys.stdout.isatty():
        console.print(table)
    else:
        # Console.print caps width at the console's own (80 in a pipe): use a wide one.
        Console(highlight=False, width=400).print(table)


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)
