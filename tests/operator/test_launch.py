"""The launch of a multi-process phase: torchrun with Kubeflow Trainer's PET_* (no cluster needed)."""

from __future__ import annotations

from typing import Any

from reverie.api.base import Scheduling, StepRuntime
from reverie.api.lineage import ModelLineage
from reverie.api.sleepcycle import Step
from reverie.api.steps import MemorySource, MemorySpec
from reverie.controller.jobs import Owner, render
from reverie.core.actions import CreateJob
from reverie.core.contract import AttemptConfig

OWNER = Owner(name="c1", namespace="ns", uid="u-1")
LINEAGE = ModelLineage.model_validate(
    {"metadata": {"name": "lin"}, "spec": {"baseModel": {"uri": "/store/base"}, "store": {"uri": "/store"}}}
)


def create(**runtime: Any) -> CreateJob:
    config = AttemptConfig(
        step=Step.CONSOLIDATION,
        cycle="c1",
        lineage="lin",
        store_uri="/store",
        output_uri="/store/lin/c1/consolidation",
        base_generation="g0",
        base_uri="/store/base",
        memory=MemorySpec(sources=[MemorySource(inline=["x"])]),
    )
    return CreateJob(
        step=Step.CONSOLIDATION,
        attempt=1,
        job_name="c1-consolidation-1",
        config=config,
        runtime=StepRuntime.model_validate(runtime),
        image="img",
    )


def container(obj: dict[str, Any]) -> dict[str, Any]:
    if obj["kind"] == "TrainJob":
        return dict(obj["spec"]["trainer"])
    if obj["kind"] == "JobSet":
        return dict(obj["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0])
    return dict(obj["spec"]["template"]["spec"]["containers"][0])


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


TORCHRUN = [
    "torchrun",
    "--max-restarts",
    "0",
    "-m",
    "reverie.workloads.steps.run_step",
    "consolidation",
    "/etc/reverie/attempt.json",
]


def test_one_process_runs_the_phase_directly() -> None:
    c = container(render(create(), owner=OWNER, lineage=LINEAGE, scheduling=Scheduling()).workload)
    assert c["command"] == ["reverie", "run-step", "consolidation", "--config", "/etc/reverie/attempt.json"]
    assert not any(k.startswith("PET_") for k in env_of(c))


def test_two_nodes_run_torchrun_with_the_torch_plugins_environment() -> None:
    objs = render(create(numNodes=2, procsPerNode=2), owner=OWNER, lineage=LINEAGE, scheduling=Scheduling())
    c = container(objs.workload)
    env = env_of(c)
    assert c["command"] == TORCHRUN
    assert (env["PET_NNODES"], env["PET_NPROC_PER_NODE"], env["PET_MASTER_PORT"]) == ("2", "2", "29500")
    assert env["PET_MASTER_ADDR"] == "c1-consolidation-1-0.c1-consolidation-1", "pod 0 through the headless Service"
    assert env["PET_NODE_RANK"] == {
        "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}
    }
    assert not {"RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR"} & set(env), "torchrun sets those per worker"
    assert objs.workload["spec"]["completionMode"] == "Indexed" and objs.service is not None


def test_one_pod_with_several_processes_keeps_its_rendezvous_inside() -> None:
    objs = render(create(procsPerNode=4), owner=OWNER, lineage=LINEAGE, scheduling=Scheduling())
    env = env_of(container(objs.workload))
    assert container(objs.workload)["command"] == TORCHRUN
    assert (env["PET_NNODES"], env["PET_NPROC_PER_NODE"], env["PET_NODE_RANK"], env["PET_MASTER_ADDR"]) == (
        "1",
        "4",
        "0",
        "127.0.0.1",
    )
    assert objs.service is None and "completionMode" not in objs.workload["spec"]


def test_a_trainjob_uses_the_torch_distributed_runtime_and_leaves_pet_to_trainer() -> None:
    tj = render(
        create(engine="TrainJob", numNodes=2, procsPerNode=8), owner=OWNER, lineage=LINEAGE, scheduling=Scheduling()
    ).workload
    trainer = tj["spec"]["trainer"]
    assert tj["spec"]["runtimeRef"] == {"name": "torch-distributed"}
    assert (trainer["numNodes"], trainer["numProcPerNode"], trainer["command"]) == (2, 8, TORCHRUN)
    assert not any(k.startswith("PET_") for k in env_of(trainer)), "Trainer rejects user-set PET_* variables"


def test_a_jobset_gets_the_same_environment_with_its_pod_names() -> None:
    js = render(create(engine="JobSet", numNodes=2), owner=OWNER, lineage=LINEAGE, scheduling=Scheduling()).workload
    env = env_of(container(js))
    assert container(js)["command"] == TORCHRUN
    assert env["PET_MASTER_ADDR"] == "c1-consolidation-1-node-0-0.c1-consolidation-1" and env["PET_NNODES"] == "2"


def test_local_mode_runs_procs_per_node_processes_through_torchrun(tmp_path) -> None:
    import json
    from types import SimpleNamespace

    from reverie.local.executor import LocalExecutor
    from reverie.local.state import LocalJob

    def command(**runtime: Any) -> list[str]:
        config = create(**runtime).config.model_copy(deep=True)
        config.consolidation.runtime = StepRuntime.model_validate(runtime)
        path = tmp_path / "attempt.json"
        path.write_text(json.dumps(config.wire()))
        job = LocalJob(
            name="c1-consolidation-1",
            cycle="c1",
            step=Step.CONSOLIDATION,
            attempt=1,
            config_path=str(path),
            log_path=str(tmp_path / "log"),
            output_uri=str(tmp_path),
        )
        return LocalExecutor._command(SimpleNamespace(python="py"), job)  # type: ignore[arg-type]

    assert command() == [
        "py",
        "-m",
        "reverie.cli",
        "run-step",
        "consolidation",
        "--config",
        str(tmp_path / "attempt.json"),
    ]
    assert command(procsPerNode=2) == [
        "py",
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes",
        "1",
        "--nproc-per-node",
        "2",
        "--max-restarts",
        "0",
        "-m",
        "reverie.workloads.steps.run_step",
        "consolidation",
        str(tmp_path / "attempt.json"),
    ]
