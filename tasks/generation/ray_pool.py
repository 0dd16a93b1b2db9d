"""Generation over several engines: one Ray actor per engine, the prompts split into contiguous shards.

`generation.engine.replicas: N` (N > 1) or a `generation.engine.ray_address` selects it (through
`tasks.generation.get_engine`). Each actor builds the engine this process would build for replicas 1
(vLLM, or transformers), so the actors serve exactly what one engine serves. Every prompt carries its
own seed, so its samples depend neither on the engine that draws them nor on the prompts beside it:
shard i goes to actor i and the shards' results are concatenated in prompt order, giving the rows of
one engine.

Where the actors run:
- `ray_address` None: a local Ray cluster on this machine (no dashboard, logs kept out of the
  driver's output), stopped when the last pool closes. Each engine is pinned to a slice of this
  machine's cores, as engines sharing every core slow each other down.
- `ray://host:10001` or `auto`: an existing cluster. Its nodes need this package installed and the
  model directories at the same paths (a shared filesystem, or the same image and home).
- A cluster with GPUs gives each actor `tensor_parallel_size` GPUs; one without gives each
  `cpus_per_replica` CPUs (default: the cluster's CPUs shared out evenly, in fractions where needed).

Compare 1 and 2 replicas:  .venv/bin/python bench/generate.py --model DIR --replicas 2
"""

from __future__ import annotations

import logging
import math
import os

from configs.schema import EngineConfig, SamplingConfig
from tasks.generation import EngineError, Generation, Prompt

# A local cluster carries prompts and completions only (kilobytes per prompt); Ray's default reserves
# 30 % of the machine's memory for its object store, which other processes here need.
LOCAL_OBJECT_STORE_BYTES = 512 * 1024**2
# Where the actors' own output goes, since it is kept out of the driver's.
LOGS = "/tmp/ray/session_latest/logs"

# Whether this process started the local cluster, and how many pools use it (the last one stops it).
_local = {"started": False, "pools": 0}


def shard_bounds(n: int, k: int) -> list[tuple[int, int]]:
    """Contiguous `[lo, hi)` ranges that split `n` items over at most `k` shards.

    Sizes differ by at most one, larger shards first; no shard is empty.

    >>> shard_bounds(5, 2)
    [(0, 3), (3, 5)]
    >>> shard_bounds(1, 3)
    [(0, 1)]
    >>> shard_bounds(0, 2)
    []
    """
    k = min(k, n)
    bounds, lo = [], 0
    for i in range(k):
        hi = lo + n // k + (1 if i < n % k else 0)
        bounds.append((lo, hi))
        lo = hi
    return bounds


def core_slices(cores: list[int], k: int) -> list[list[int]]:
    """This machine's `cores` dealt into `k` contiguous slices, one per local engine.

    With fewer cores than engines, engines share cores round-robin (one core each).

    >>> core_slices([0, 1, 2, 3, 4], 2)
    [[0, 1, 2], [3, 4]]
    >>> core_slices([0, 1], 3)
    [[0], [1], [0]]
    """
    if len(cores) < k:
        return [[cores[i % len(cores)]] for i in range(k)]
    return [cores[lo:hi] for lo, hi in shard_bounds(len(cores), k)]


def cpus_each(cfg: EngineConfig, cluster_cpus: float) -> float:
    """Ray CPUs one actor reserves on a cluster without GPUs.

    Ray takes fractions below 1 only, so an even share above 1 is rounded down to whole CPUs.

    >>> cpus_each(EngineConfig(replicas=2), 2.0)
    1.0
    >>> round(cpus_each(EngineConfig(replicas=3), 2.0), 3)
    0.667
    >>> cpus_each(EngineConfig(replicas=3), 16.0)
    5
    """
    if cfg.cpus_per_replica is not None:
        return cfg.cpus_per_replica
    share = cluster_cpus / cfg.replicas
    return math.floor(share) if share > 1 else share


class Replica:
    """One engine inside a Ray actor: the actor's process owns it (and the engine's child processes)."""

    def __init__(self, cfg: EngineConfig, model_path: str, cores: list[int] | None):
        from configs.quiet import apply_defaults

        apply_defaults()  # a remote node's worker has not got the driver's environment
        if cores:
            # vLLM binds its threads within this affinity; its child processes inherit it. Ray sets one
            # OpenMP thread for a fractional CPU reservation, which would leave a transformers engine on
            # one core: give it the slice (torch is not imported yet in this process).
            os.sched_setaffinity(0, cores)
            os.environ["OMP_NUM_THREADS"] = str(len(cores))
        from tasks.generation import create_engine

        self.engine = create_engine(cfg.model_copy(update={"replicas": 1, "ray_address": None}), model_path)
        self.prompts = 0

    def generate(self, prompts: list[Prompt], params: SamplingConfig, seeds: list[int]) -> list[list[Generation]]:
        out = self.engine.generate(prompts, params, seeds)
        self.prompts += len(prompts)
        return out

    def load(self, model_path: str) -> None:
        self.engine.load(model_path)

    def served(self) -> int:
        """Prompts this engine has generated for (also the readiness probe: answers once the engine is up)."""
        return self.prompts

    def close(self) -> None:
        self.engine.close()


def _cores() -> list[int]:
    """The cores this process may run on (a container or `taskset` may allow fewer than the machine has)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))  # macOS has no affinity API


def _connect(ray, cfg: EngineConfig) -> None:
    if ray.is_initialized():
        return  # one Ray session per process, shared by every pool
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report and no notice about it
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
    if cfg.ray_address:
        try:
            ray.init(address=cfg.ray_address, **quiet)
        except (ConnectionError, RuntimeError) as e:
            raise EngineError(
                f"generation.engine.ray_address {cfg.ray_address!r}: cannot connect to the Ray cluster ({e}); "
                "start it (`ray start --head` on its head node), fix the address, or remove ray_address to "
                "run the engines on a local cluster"
            ) from e
        return
    ray.init(
        num_cpus=len(_cores()),
        include_dashboard=False,
        object_store_memory=LOCAL_OBJECT_STORE_BYTES,
        **quiet,
    )
    _local["started"] = True


class RayEnginePool:
    """`cfg.replicas` engines behind the Engine protocol; prompts are split over them in contiguous shards."""

    def __init__(self, cfg: EngineConfig, model_path: str):
        try:
            import ray
        except ImportError as e:  # pragma: no cover - depends on the install
            raise EngineError(
                f"generation.engine.replicas is {cfg.replicas} but Ray does not import ({e}): install ray "
                "(`pip install 'ray==2.60.*'`), or set replicas: 1 and remove ray_address"
            ) from e
        self._ray = ray
        self.cfg = cfg
        self.model_path = model_path
        self._tokenizer = None
        self._closed = False
        _connect(ray, cfg)
        _local["pools"] += 1
        self.actors: list = []
        try:
            self._start(cfg, model_path)
        except BaseException:
            self.close()
            raise

    def _start(self, cfg: EngineConfig, model_path: str) -> None:
        ray = self._ray
        total, free = ray.cluster_resources(), ray.available_resources()
        where = cfg.ray_address or "local"
        if total.get("GPU", 0) > 0:
            need, kind = cfg.tensor_parallel_size, "GPU"
            options = {"num_gpus": need}
        else:
            need, kind = cpus_each(cfg, total.get("CPU", 0)), "CPU"
            options = {"num_cpus": need}
        # Ray would keep an actor that does not fit pending for ever: say so now, with the numbers.
        if need * cfg.replicas > free.get(kind, 0) + 1e-6:
            raise EngineError(
                f"generation.engine.replicas {cfg.replicas} x {need:g} {kind} each needs "
                f"{need * cfg.replicas:g} {kind}, the Ray cluster ({where}) has {free.get(kind, 0):g} free of "
                f"{total.get(kind, 0):g}: lower replicas"
                + (" or cpus_per_replica" if kind == "CPU" else " or tensor_parallel_size")
                + ", or add nodes"
            )
        slices = [None] * cfg.replicas
        if _local["started"] and kind == "CPU" and hasattr(os, "sched_setaffinity"):
            slices = core_slices(_cores(), cfg.replicas)
        actor = ray.remote(Replica)
        # All start at once, so N engines are ready in about the time of one (given the cores).
        self.actors = [actor.options(**options).remote(cfg, model_path, cores) for cores in slices]
        self._get([a.served.remote() for a in self.actors], "start")

    def _get(self, refs: list, what: str) -> list:
        try:
            return self._ray.get(refs)
        except self._ray.exceptions.RayActorError as e:
            # The actor process is gone (its engine failed to start, or it ran out of memory). Ray's message
            # holds the actor's whole traceback; its last line is the error itself.
            lines = [x for x in str(e).strip().splitlines() if x.strip()]
            raise EngineError(
                f"an engine replica could not {what} ({self.model_path}): {lines[-1] if lines else type(e).__name__}; "
                f"the actor's traceback is in the chained error, its logs under {LOGS} on its node"
            ) from e

    @property
    def tokenizer(self):
        """The served model's tokenizer, loaded here, for callers that count or render tokens themselves."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        return self._tokenizer

    def load(self, model_path: str) -> None:
        """Reload every replica's weights in place (same architecture and tokenizer)."""
        self._get([a.load.remote(model_path) for a in self.actors], "reload weights")
        self.model_path = model_path

    def generate(self, prompts: list[Prompt], params: SamplingConfig, seeds: list[int]) -> list[list[Generation]]:
        """As `Engine.generate`: shard i of the prompts (and of their seeds) goes to replica i."""
        if len(seeds) != len(prompts):
            raise EngineError(f"generate got {len(prompts)} prompts but {len(seeds)} seeds: give one seed per prompt")
        bounds = shard_bounds(len(prompts), len(self.actors))
        refs = [a.generate.remote(prompts[lo:hi], params, seeds[lo:hi]) for a, (lo, hi) in zip(self.actors, bounds)]
        return [gens for shard in self._get(refs, "generate") for gens in shard]

    def served(self) -> list[int]:
        """Prompts each replica has generated for, in replica order."""
        return self._get([a.served.remote() for a in self.actors], "report")

    def close(self) -> None:
        """Shut the engines down, end their actors, and stop the local cluster when no pool is left."""
        ray = self._ray
        if self._closed:
            return
        self._closed = True
        if self.actors:
            try:
                ray.get([a.close.remote() for a in self.actors], timeout=60)
            except Exception:  # noqa: BLE001 - a replica that died or hangs has no engine left to shut down
                pass
            for a in self.actors:
                ray.kill(a)
            self.actors = []
        _local["pools"] = max(0, _local["pools"] - 1)
        if _local["started"] and _local["pools"] == 0:
            ray.shutdown()
            _local["started"] = False
