"""The local-mode verbs: ``sleep``, ``report``, ``ask``, ``export``, and ``run-step`` (the Job contract).

None of them needs a cluster or the ``operator`` extra; ``ask --lineage`` reads
a champion's URI from the cluster through :mod:`reverie.cli.cluster`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

if TYPE_CHECKING:
    pass

from reverie.cli.app import KubeconfigOpt, NamespaceOpt, app, console, err, fail, show
from reverie.cli.cluster import cluster_lineage


@app.command()
def sleep(
    target: Annotated[
        Path, typer.Argument(help="A run directory holding a SleepCycle and its ModelLineage, or a sleepcycle.yaml.")
    ],
    again: Annotated[
        bool, typer.Option("--again", help="The cycle already finished: start the next sleep from the new champion.")
    ] = False,
    approve: Annotated[
        bool, typer.Option("--approve", help="Approve a cycle waiting in AwaitingApproval, then continue.")
    ] = False,
    reject: Annotated[bool, typer.Option("--reject", help="Reject a cycle waiting in AwaitingApproval.")] = False,
) -> None:
    """Run one whole sleep cycle locally: consolidation, dreaming, evaluation, gate, promotion.

    The same planner as the operator decides each step; phases run as local
    processes. State lives in <dir>/.reverie/, so Ctrl-C and the same command
    again resumes where it stopped. A lineage whose baseModel.uri is
    builtin:tiny builds a tiny model and its memories on the first run.
    """
    from reverie.local.console import RichObserver, summary_table
    from reverie.local.project import ProjectError, load_project
    from reverie.local.runner import LocalRunError, NothingToConsolidate, NotStarted, report_path, run_cycle
    from reverie.local.state import StateLocked

    if approve and reject:
        raise fail("--approve and --reject exclude each other")
    try:
        project = load_project(target)
    except ProjectError as exc:
        raise fail(str(exc)) from exc
    console.print(
        f"[bold]reverie[/bold] sleep cycle [cyan]{project.cycle.metadata.name}[/cyan] of lineage "
        f"[cyan]{project.lineage.metadata.name}[/cyan] — state in {project.state_dir}"
    )

    def on_report(state: Any, cycle: str) -> Path | None:
        from reverie.report import write_report

        try:
            return write_report(state, report_path(project.state_dir, cycle), cycle=cycle)
        except Exception as exc:  # a report problem must not hide the cycle's outcome
            err.print(f"[yellow]warning:[/yellow] the report could not be written: {exc}")
            return None

    try:
        outcome = run_cycle(
            project,
            observer=RichObserver(console),
            again=again,
            approve="approved" if approve else "rejected" if reject else None,
            on_report=on_report,
        )
    except (LocalRunError, StateLocked) as exc:
        raise fail(str(exc)) from exc
    except NotStarted:
        raise typer.Exit(130) from None
    except NothingToConsolidate as exc:
        console.print(f"{exc}; no sleep started. Add memories with: reverie remember {target} FILE.jsonl")
        return
    if outcome.interrupted:
        raise typer.Exit(130)
    cycle = outcome.cycle
    show(summary_table(outcome.state, cycle))
    if outcome.report is not None:
        console.print(f"report: [link=file://{outcome.report}]{outcome.report}[/link]")
    phase = str(cycle.status.phase)
    served = outcome.state.lineage.status.servable
    if phase == "Succeeded" and served is not None and served.generation == cycle.status.generation:
        console.print(
            f'servable champion ({served.form}): {served.uri}\n[dim]try it: reverie ask {target} "<question>" --compare[/dim]'
        )
    if phase == "AwaitingApproval":
        console.print(f"{cycle.status.message}\nlocally: [bold]reverie sleep {target} --approve[/bold] (or --reject)")
    elif phase == "Pending":
        console.print(cycle.status.message)
        raise typer.Exit(1)
    elif phase in ("Succeeded", "Rejected") and not again:
        console.print(
            f"[dim]{cycle.status.message}. Next sleep from the champion: reverie sleep {target} --again[/dim]"
        )
    if phase == "Failed":
        raise typer.Exit(1)


def quiet_models() -> None:
    """No per-file progress bars or load reports from transformers: the command prints its own result."""
    import warnings

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft)\.")
    import importlib

    hf_logging: Any = importlib.import_module("transformers.utils.logging")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def local_run(run: Path) -> tuple[Path, Any]:
    """The state folder and :class:`~reverie.local.state.LocalState` of a local run directory.

    Accepts the run directory, its ``.reverie`` folder, or ``.reverie/runs/<cycle>``.
    """
    from reverie.local.project import STATE_DIR_NAME
    from reverie.local.state import load_state

    run = run.resolve()
    candidates = [run, run / STATE_DIR_NAME]
    if run.parent.name == "runs":
        candidates.append(run.parent.parent)
    state_dir = next((c for c in candidates if (c / "state.json").is_file()), None)
    if state_dir is None:
        raise fail(f"{run}: no local run here (no .reverie/state.json); run `reverie sleep {run}` first")
    state = load_state(state_dir)
    assert state is not None
    return state_dir, state


@app.command()
def report(
    run: Annotated[Path, typer.Argument(help="The run directory given to `reverie sleep` (or its .reverie folder).")],
    cycle: Annotated[str | None, typer.Option("--cycle", help="Which cycle of the run (default: the latest).")] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Where to write (default: .reverie/runs/<cycle>/report.html).")
    ] = None,
) -> None:
    """Regenerate the self-contained report.html of a local run."""
    from reverie.local.runner import report_path
    from reverie.report import write_report

    run = run.resolve()
    # Also accept .reverie/runs/<cycle>.
    if run.parent.name == "runs":
        cycle = cycle or run.name
    state_dir, state = local_run(run)
    try:
        name = state.cycle(cycle).metadata.name if cycle else (state.current.metadata.name if state.current else None)
    except KeyError:
        raise fail(
            f"no cycle {cycle!r} in {state_dir} (cycles: {', '.join(c.metadata.name for c in state.cycles)})"
        ) from None
    if name is None:
        raise fail(f"{state_dir}: the run has no cycle yet")
    path = write_report(state, out or report_path(state_dir, name), cycle=name)
    console.print(f"report: {path}")


@app.command()
def ask(
    args: Annotated[
        list[str],
        typer.Argument(
            help="DIR QUESTION... (a local run directory, then the questions), or with --lineage only the questions."
        ),
    ],
    lineage: Annotated[
        str | None,
        typer.Option(
            "--lineage", "-l", help="Ask the champion of this ModelLineage on the cluster instead of a local run."
        ),
    ] = None,
    compare: Annotated[
        bool, typer.Option("--compare", help="Also ask the base generation and the memory-in-context teacher.")
    ] = False,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="Tokens generated per answer.")] = 48,
    namespace: NamespaceOpt = None,
    kubeconfig: KubeconfigOpt = None,
) -> None:
    """Ask the champion a question (greedy, as evaluation asks); --compare adds the base and the teacher.

    reverie ask examples/quickstart "Where does Zorblat live?" --compare
    reverie ask --lineage assistant "Who is Mira Okafor?"   (the champion's URI must be readable from here, e.g. s3://)
    """
    from rich.markup import escape

    from reverie.workloads.ml.ask import AskError, ask_targets
    from reverie.workloads.ml.ask import ask as ask_models
    from reverie.workloads.store.modelio import GenerationError

    if lineage is not None:
        questions = list(args)
        lin = cluster_lineage(lineage, namespace, kubeconfig)
    else:
        if len(args) < 2:
            raise fail("give a local run directory and at least one question, or --lineage NAME and the questions")
        _, state = local_run(Path(args[0]))
        lin, questions = state.lineage, list(args[1:])
    if not questions:
        raise fail("no question given")
    quiet_models()
    try:
        targets = ask_targets(lin)
        columns = ask_models(
            targets, questions, compare=compare, max_new_tokens=max_new_tokens, store_uri=lin.spec.store.uri
        )
    except (AskError, GenerationError) as exc:
        hint = ""
        if lineage is not None and isinstance(exc, GenerationError):
            hint = (
                "; `ask --lineage` reads the champion from this machine: an s3:// store needs its credentials "
                "in the environment, a PVC path is only readable inside the cluster"
            )
        raise fail(f"{exc}{hint}") from exc
    table = Table(header_style="bold", show_lines=True)
    table.add_column("QUESTION")
    for column in columns:
        table.add_column(column.title)
    for i, question in enumerate(questions):
        cells = []
        for column in columns:
            note = f"\n[dim]({escape(column.notes[i])})[/dim]" if column.notes else ""
            cells.append((escape(column.answers[i]) or "[dim](no answer)[/dim]") + note)
        table.add_row(escape(question), *cells)
    show(table)


@app.command()
def export(
    source: Annotated[
        str,
        typer.Argument(help="A generation folder or URI (file://, s3://), or a local run directory (its champion)."),
    ],
    out: Annotated[str, typer.Argument(help="Folder or URI to write (replaced if it exists).")],
    form: Annotated[
        str,
        typer.Option(
            "--form",
            help="merged: one plain Hugging Face folder; adapter: one PEFT LoRA adapter over the unchanged base.",
        ),
    ] = "merged",
    base_ref: Annotated[
        str | None,
        typer.Option(
            "--base-ref",
            help="adapter form: what base_model_name_or_path names (default: a run's baseModel, else the generation, whose base weights it holds).",
        ),
    ] = None,
) -> None:
    """Write a generation as something any server loads with no Reverie code.

    merged: base + every expert slot folded into the weights (safetensors, config,
    tokenizer, generation config) for AutoModelForCausalLM, vLLM, TGI, KServe.
    adapter: the N slots as one standard LoRA adapter of rank Σr, for PEFT and vLLM LoRA serving.
    """
    from reverie.api.lineage import ServableForm
    from reverie.workloads.steps.export import export_generation
    from reverie.workloads.store.modelio import GenerationError

    try:
        chosen = ServableForm(form)
    except ValueError:
        raise fail(f"--form must be merged or adapter, not {form!r}") from None
    uri = source
    local = Path(source)
    if "://" not in source and local.is_dir() and not (local / "config.json").is_file():
        _, state = local_run(local)
        if state.lineage.status.champion_uri is None:
            raise fail(f"{source}: the run has no champion yet")
        uri = state.lineage.status.champion_uri
        base_ref = base_ref or state.lineage.spec.base_model.uri  # generation 0: what a server loads as the base
        console.print(f"champion {state.lineage.status.champion}: {uri}")
    quiet_models()
    try:
        path = export_generation(uri, out, form=chosen, base_ref=base_ref)
    except GenerationError as exc:
        raise fail(str(exc)) from exc
    where = out if "://" in out else str(path)
    console.print(f"wrote the {chosen.value} form to {where}")
    if chosen == ServableForm.MERGED:
        console.print(f"[dim]load: AutoModelForCausalLM.from_pretrained({where!r})  ·  vllm serve {where}[/dim]")
    else:
        base = base_ref or uri
        console.print(
            f"[dim]load: PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({base!r}), {where!r})  ·  "
            f"vllm serve {base} --enable-lora --lora-modules champion={where}[/dim]"
        )


@app.command("run-step")
def run_step(
    step: Annotated[str, typer.Argument(help="consolidation, dreaming or evaluation.")],
    config: Annotated[
        Path, typer.Option("--config", help="AttemptConfig JSON (in a Job: /etc/reverie/attempt.json).")
    ] = Path("/etc/reverie/attempt.json"),
) -> None:
    """Run one phase of a cycle (the Job contract; what phase Jobs and local mode execute)."""
    from reverie.workloads.steps.run_step import run_step as run

    raise typer.Exit(run(step, str(config)))
