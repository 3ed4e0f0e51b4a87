"""Phases on N processes: the world a launcher made, how work is split, who writes.

Every multi-process phase is started by ``torchrun`` (the operator renders its
``PET_*`` environment, :mod:`reverie.core.launch`); torchrun gives each worker
``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` and this module reads nothing else
(the process group joins through ``env://``).  A process started without a
launcher is a world of one, and then every helper here is the identity: no
process group, no collective, bit-for-bit the single-process code path.

How the work is split, and why it stays equal to one process:

* **Training rows.**  A step's global batch is drawn exactly as on one process
  (:func:`reverie.workloads.steps.consolidate.step_rows`), then each rank takes a
  contiguous share (:func:`share`).  Token-mean losses are reweighted by the
  rank's share of the step's tokens (:func:`token_weight`), so DDP's (and
  DeepSpeed's) gradient *average* equals the one-process gradient of the whole
  batch.
* **Generation and teacher passes.**  Prompts are cut into the same batches one
  process would use and the batches are dealt round-robin to ranks
  (:func:`owned_batches`); greedy outputs are therefore identical, not merely
  close (same batch, same padding).  Results are gathered to every rank in the
  original order (:class:`ShardedSampling`; the teacher pass shards the same way in
  :func:`reverie.workloads.steps.selfstudy.sharded_teacher_targets`).
  Sampled calls either run whole on every rank (``sampling="replicate"``: the
  same samples as one process) or are split with one seed per batch
  (``sampling="split"``: independent of the number of ranks).
* **Lockstep.**  Every rank makes the same collective calls in the same order:
  each sharded call ends in one all-gather, each training step in the same
  forward/backward, each save in one gather.  Under ZeRO-3 a forward is itself
  a collective, so generation and teacher passes run inside
  :func:`local_forwards`, which gathers the weights once (DeepSpeed's
  ``unwrap_model_for_generation``) and lets ranks run uneven numbers of batches.
* **Writes.**  Rank 0 alone writes artifacts, checkpoints and the result
  (:func:`on_main`); the others wait for it and get its return value.

Strategies: ``zeroStage: 0`` on N processes is torch DDP (:class:`DDPTrainer`:
gloo on CPU, nccl on GPU); ``zeroStage: 2|3`` is DeepSpeed
(:mod:`reverie.workloads.ml.deepspeed_config`).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from reverie.workloads.ml.sampling import Generated
from reverie.workloads.ml.trainer import TorchTrainer

T = TypeVar("T")

# Fault injection for the failure tests: "RANK:STEP" makes that rank SIGKILL itself
# when it starts that training step (a preempted node, an OOM kill).
FAULT_ENV = "REVERIE_FAULT_KILL_RANK_AT_STEP"
TIMEOUT_ENV = "REVERIE_DIST_TIMEOUT_S"


class WorldError(ValueError):
    """The launcher's environment is inconsistent; the message names the variable."""


@dataclass(frozen=True)
class World:
    """This process's place among the phase's processes."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world_from_env(env: Any = None) -> World:
    """``RANK``/``LOCAL_RANK``/``WORLD_SIZE`` as torchrun sets them (absent: a world of one)."""
    env = os.environ if env is None else env
    try:
        size = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise WorldError(f"RANK, LOCAL_RANK and WORLD_SIZE must be integers ({exc})") from exc
    if size < 1 or not 0 <= rank < size:
        raise WorldError(f"RANK={rank} is not in a world of WORLD_SIZE={size}; launch with torchrun")
    return World(rank=rank, local_rank=local, size=size)


def backend_name() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_world() -> World:
    """Join the launcher's process group (``env://``) when there is more than one process."""

    world = world_from_env()
    if not world.distributed or dist.is_initialized():
        return world
    if torch.cuda.is_available():
        torch.cuda.set_device(world.local_rank)
    timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, "1800")))
    dist.init_process_group(backend=backend_name(), init_method="env://", timeout=timeout)
    return world


def device_of(world: World) -> torch.device:
    return torch.device(f"cuda:{world.local_rank}") if torch.cuda.is_available() else torch.device("cpu")


# ----------------------------------------------------------------------------- collectives


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def all_gather_objects(world: World, obj: T) -> list[T]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not world.distributed:
        return [obj]

    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(world: World, values: Sequence[float]) -> list[float]:
    """Element-wise sum of ``values`` over ranks (float64, on the collective's device)."""
    if not world.distributed:
        return [float(v) for v in values]

    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_collective_device(world))
    dist.all_reduce(t)
    return [float(v) for v in t.cpu()]


def _collective_device(world: World) -> torch.device:

    return device_of(world) if dist.get_backend() == "nccl" else torch.device("cpu")


class MainFailed(RuntimeError):
    """Rank 0 failed at a step the other ranks were waiting on."""


def on_main(world: World, fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only (a write), let the others wait, and give everyone its return value.

    If rank 0 raises, the other ranks raise :class:`MainFailed` instead of waiting
    at the next collective until the timeout.
    """
    if not world.distributed:
        return fn()

    box: list[Any] = [None]
    error: BaseException | None = None
    if world.main:
        try:
            box = [("ok", fn())]
        except BaseException as exc:
            error = exc
            box = [("error", f"{type(exc).__name__}: {exc}")]
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if error is not None:
        raise error
    if status == "error":
        raise MainFailed(f"rank 0 failed: {value}")
    return value  # type: ignore[no-any-return]


# ----------------------------------------------------------------------------- splitting work


def share(rows: Sequence[T], world: World) -> list[T]:
    """This rank's contiguous share of a step's rows (sizes differ by at most one)."""
    if not world.distributed:
        return list(rows)
    n, k = len(rows), world.size
    start = world.rank * n // k
    stop = (world.rank + 1) * n // k
    return list(rows[start:stop])


def token_weight(world: World, local_tokens: int) -> tuple[float, int]:
    """(weight, global tokens): a token-mean loss times ``weight`` makes the ranks' gradient average exact.

    Σ_r w_r · mean_r = Σ_r N·(n_r/n)·(S_r/n_r) / N = S/n, the one-process token mean.
    """
    if not world.distributed:
        return 1.0, local_tokens
    (total,) = all_reduce_sum(world, [local_tokens])
    return world.size * local_tokens / max(total, 1.0), int(total)


def owned_batches(n: int, batch_size: int, world: World) -> list[range]:
    """The batches (index ranges) of ``n`` items this rank runs: one process's batches, dealt round-robin."""
    batches = [range(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    return batches[world.rank :: world.size]


def batch_seed(seed: int | None, batch: int) -> int:
    h = hashlib.sha256(f"{seed}:{batch}".encode()).digest()
    return int.from_bytes(h[:4], "big")


# ----------------------------------------------------------------------------- generation


def merge_indexed(world: World, n: int, mine: list[tuple[int, Any]]) -> list[Any]:
    out: list[Any] = [None] * n
    for part in all_gather_objects(world, mine):
        for i, v in part:
            out[i] = v
    return out


class ShardedSampling:
    """A generation backend whose calls are split across ranks and gathered back in prompt order.

    Every rank must make the same calls with the same prompts (lockstep); each
    call ends in one all-gather.  ``forwards`` is entered around the rank's own
    batches: :func:`local_forwards` under ZeRO-3.
    """

    def __init__(
        self,
        inner: Any,
        world: World,
        *,
        sampling: Literal["replicate", "split"] = "split",
        forwards: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
    ) -> None:
        self.inner, self.world, self.sampling, self.forwards = inner, world, sampling, forwards
        self.batch_size = int(getattr(inner, "batch_size", 32))

    def generate(self, prompts: Sequence[str], **kw: Any) -> Any:

        greedy = float(kw.get("temperature", 1.0)) <= 0.0
        if not self.world.distributed or (not greedy and self.sampling == "replicate"):
            with self.forwards():
                return self.inner.generate(prompts, **kw)
        mine: list[tuple[int, tuple[str, list[int], list[float] | None]]] = []
        with self.forwards():
            for j, rows in enumerate(owned_batches(len(prompts), self.batch_size, self.world)):
                call = dict(kw)
                if not greedy:  # one seed per batch, whichever rank runs it
                    call["seed"] = batch_seed(kw.get("seed"), self.world.rank + j * self.world.size)
                out = self.inner.generate([prompts[i] for i in rows], **call)
                for j, i in enumerate(rows):
                    mine.append((i, (out.texts[j], out.token_ids[j], out.logprobs[j] if out.logprobs else None)))
        merged = merge_indexed(self.world, len(prompts), mine)
        logprobs = [m[2] for m in merged] if kw.get("return_logprobs") else None
        return Generated(texts=[m[0] for m in merged], token_ids=[m[1] for m in merged], logprobs=logprobs)


# ----------------------------------------------------------------------------- training


class DDPTrainer(TorchTrainer):
    """:class:`TorchTrainer`'s step over torch DDP: the new slot's gradients are averaged across ranks.

    The student's forward must go through :attr:`forward_model` (the DDP wrapper)
    so DDP can prepare the gradient all-reduce (in ``loss.backward()``); frozen-teacher
    passes and generation use the bare model (no gradient, no collective).
    """

    def __init__(
        self, model: Any, params: Sequence[torch.nn.Parameter], *, world: World, lr: float, max_grad_norm: float
    ) -> None:

        super().__init__(params, lr=lr, max_grad_norm=max_grad_norm)
        device_ids = [world.local_rank] if torch.cuda.is_available() else None
        # Only the new slot requires gradients; every forward of the student uses all of it.
        self.forward_model = DDP(model, device_ids=device_ids, broadcast_buffers=False)


def forward_model(trainer: Any, model: Any) -> Any:
    """What the student's training forward calls: the DDP wrapper, else the model itself."""
    return getattr(trainer, "forward_model", model)


def zero3_engine(trainer: Any) -> Any | None:
    engine = getattr(trainer, "engine", None)
    if engine is not None and engine.zero_optimization_stage() == 3:
        return engine
    return None


@contextlib.contextmanager
def local_forwards(trainer: Any) -> Iterator[None]:
    """Under ZeRO-3: gather every weight once and drop the partition hooks, so forwards need no peer.

    All ranks must enter together (the gather is a collective); inside, each rank
    may run a different number of forwards (its own batches).  Elsewhere: nothing.
    """
    engine = zero3_engine(trainer)
    if engine is None:
        yield
        return
    from deepspeed.runtime.zero.stage3 import unwrap_model_for_generation

    with unwrap_model_for_generation(engine):
        yield


@contextlib.contextmanager
def gathered(params: Sequence[torch.nn.Parameter]) -> Iterator[None]:
    """Full values of ZeRO-3 partitioned ``params`` inside the block (all ranks enter); else nothing."""
    if not any(hasattr(p, "ds_id") for p in params):
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(params), modifier_rank=None):
        yield


def gathered_state(params: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    """The new slot's full weights as CPU tensors on every rank (a collective under ZeRO-3)."""
    with gathered(list(params.values())):
        return {k: v.detach().cpu().clone() for k, v in params.items()}


def partitioned_share(model: Any) -> tuple[int, int]:
    """(elements this rank holds, elements of the model) of ZeRO-3 partitioned parameters."""
    held = total = 0
    for p in model.parameters():
        if hasattr(p, "ds_tensor"):
            held += p.ds_tensor.numel()
            total += p.ds_numel
    return held, total


def assert_partitioned(model: Any, world: World) -> tuple[int, int]:
    """Fail unless ZeRO-3 really split the weights across ranks (a tiny model is easily left whole)."""
    held, total = partitioned_share(model)
    if world.distributed and not (0 < held < total):
        raise RuntimeError(
            f"ZeRO-3 did not partition the model on {world.size} ranks (this rank holds {held} of {total} "
            "elements); stage3_param_persistence_threshold must be small enough for this model"
        )
    return held, total


# ----------------------------------------------------------------------------- failures


def maybe_inject_fault(world: World, step: int) -> None:
    """``REVERIE_FAULT_KILL_RANK_AT_STEP=RANK:STEP``: that rank dies at once (SIGKILL) at that step."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    rank, _, at = spec.partition(":")
    if int(rank) == world.rank and int(at) == step:
        os.kill(os.getpid(), signal.SIGKILL)


class Terminated(RuntimeError):
    """The launcher stopped this worker (a peer failed, or the pod is being deleted)."""


def raise_on_sigterm(world: World) -> None:
    """On N processes, turn torchrun's SIGTERM (a peer died) into an exception the phase reports.

    When a peer dies, this rank's next collective usually fails at once and torchrun's SIGTERM comes
    while that failure is being reported: the handler then does nothing, so the report (rank 0's
    ``result.json``) is written instead of being cut short by a second exception.  torchrun sends
    SIGKILL 30 s after SIGTERM, so a rank never outlives its launcher for long.
    """
    if not world.distributed:
        return

    def handler(signum: int, _frame: Any) -> None:
        if sys.exc_info()[1] is not None:
            return  # a failure is being handled: let it be reported
        raise Terminated(
            f"rank {world.rank} of {world.size} was stopped by signal {signum}: another rank failed "
            "or the pod is being deleted; the next attempt resumes from the last checkpoint"
        )

    signal.signal(signal.SIGTERM, handler)
