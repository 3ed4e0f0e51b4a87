"""How a phase's processes are launched: one process directly, more than one through ``torchrun``.

The launch is the same everywhere, so the workload only ever reads ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE`` (``env://``):

* a Kubernetes Indexed Job of ``numNodes`` pods, each running
  ``torchrun`` with the ``PET_*`` environment Kubeflow Trainer's torch plugin
  injects (``PET_NNODES``, ``PET_NPROC_PER_NODE``, ``PET_NODE_RANK`` from the
  completion index, ``PET_MASTER_ADDR`` = pod 0 through the headless Service,
  ``PET_MASTER_PORT``); torchrun reads those as its defaults;
* a Kubeflow ``TrainJob`` on the ``torch-distributed`` runtime: the same
  command, and Trainer sets the same ``PET_*`` itself (it rejects user-set ones);
* a JobSet: the same ``PET_*``, rendered by the operator;
* local mode: ``torchrun --standalone --nproc-per-node procsPerNode``.

Pure: no Kubernetes client, no torch.
"""

from __future__ import annotations

from reverie.api.base import StepRuntime

MASTER_PORT = 29500
WORKLOAD_MODULE = "reverie.workloads.steps.run_step"
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"


def processes(runtime: StepRuntime) -> int:
    """The phase's world size: nodes × processes per node."""
    return runtime.num_nodes * runtime.procs_per_node


def needs_torchrun(runtime: StepRuntime) -> bool:
    return processes(runtime) > 1


def torchrun_command(step: str, config_path: str, *, standalone_procs: int | None = None) -> list[str]:
    """``torchrun … -m reverie.workloads.steps.run_step STEP CONFIG``.

    In a pod torchrun takes nodes, processes, node rank and master from ``PET_*``;
    ``standalone_procs`` (local mode) runs that many processes on this machine
    with a rendezvous on a free local port.
    """
    head = ["torchrun"]
    if standalone_procs is not None:
        head += ["--standalone", "--nnodes", "1", "--nproc-per-node", str(standalone_procs)]
    # No restarts inside an attempt: a failed rank fails the attempt, and the operator's
    # retry resumes from the last checkpoint (its budget survives operator restarts).
    return [*head, "--max-restarts", "0", "-m", WORKLOAD_MODULE, step, config_path]


def pet_env(runtime: StepRuntime, *, master: str) -> list[dict[str, object]]:
    """The torch plugin's ``PET_*`` variables as container env (node rank from the completion index)."""
    plain = {
        "PET_NNODES": str(runtime.num_nodes),
        "PET_NPROC_PER_NODE": str(runtime.procs_per_node),
        "PET_MASTER_ADDR": master,
        "PET_MASTER_PORT": str(MASTER_PORT),
    }
    env: list[dict[str, object]] = [{"name": k, "value": v} for k, v in plain.items()]
    if runtime.num_nodes > 1:
        env.append(
            {
                "name": "PET_NODE_RANK",
                "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"}},
            }
        )
    else:
        env.append({"name": "PET_NODE_RANK", "value": "0"})
    return env
