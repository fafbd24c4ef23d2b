"""A Ray cluster to run on: joined or started, sized into actors, and left as found.

Used by ``evaluate --engine ray`` (onnxsplit.eval.engines) and ``explain --engine ray``
(onnxsplit.explain.runner). Actors get one CPU each (onnxruntime then runs one intra-op thread
per CPU it holds) or, where the cluster has GPUs and the device is not "cpu", one GPU each
(CUDA sessions). An actor whose process dies is restarted by Ray and its call is retried
(``max_restarts``, ``max_task_retries``): Ray's fault tolerance, not ours.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from onnxsplit.errors import OnnxSplitError

TASK_RETRIES = 3  # a call whose actor died is retried at most this often
ENGINES = ("local", "ray")


def check_engine(engine: str, address: str | None) -> None:
    """One error for an unknown engine or an --address without the Ray engine."""
    if engine not in ENGINES:
        raise OnnxSplitError(f"unknown engine '{engine}'; use one of {', '.join(ENGINES)}")
    if address and engine != "ray":
        raise OnnxSplitError("--address needs --engine ray")


def import_ray(purpose: str):
    from onnxsplit import extras

    try:
        import ray
    except ImportError:
        raise extras.missing("ray", purpose) from None
    return ray


def _probe(address: str | None, timeout: float = 5.0) -> None:
    """Fail fast on a HOST:PORT (or ray://HOST:PORT) where nothing listens: Ray itself
    retries for minutes."""
    import socket

    if not address or address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not port.isdigit():
        return
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout).close()
    except OSError as exc:
        raise OnnxSplitError(
            f"cannot reach the Ray cluster at '{address}': {exc.strerror or exc} (start one with "
            "`ray start --head`, or leave out --address for a local one)"
        ) from None


@dataclass(frozen=True)
class ActorShape:
    count: int
    options: dict  # ray.remote options: num_cpus / num_gpus
    device: str  # "cpu" or "cuda"
    threads: int | None  # onnxruntime intra-op threads per actor (None: the provider's choice)


@dataclass
class RayCluster:
    """`address` None: the running cluster of this process, else a new local one."""

    address: str | None = None
    workers: int | None = None  # default: one actor per GPU, else one per CPU

    def connect(self, purpose: str):
        """The ray module, initialised; remembers whether this call started it."""
        ray = import_ray(purpose)
        self.started = False
        # Ray's core logs an error line on stderr for every actor whose constructor argument
        # is in the object store (ours are, on purpose, and held for the whole run so that a
        # restarted actor finds them); its C++ log lines still go to the session's log files
        # under /tmp/ray, and failures surface as Python exceptions
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
        if not ray.is_initialized():
            _probe(self.address)
            try:
                ray.init(
                    address=self.address,
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level="ERROR",
                )
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise OnnxSplitError(
                    f"cannot reach the Ray cluster at '{self.address}': {exc}"
                ) from None
            self.started = True
        return ray

    def release(self, ray, actors: list) -> None:
        for actor in actors:
            ray.kill(actor)
        if self.started:
            ray.shutdown()

    def shape(self, ray, device: str, jobs: int) -> ActorShape:
        """How many actors, with what resources, for `jobs` units of work."""
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0)) if device != "cpu" else 0
        if gpus:
            n = max(1, min(self.workers or gpus, gpus, jobs))
            return ActorShape(n, {"num_cpus": 1, "num_gpus": 1}, "cuda", None)
        cpus = max(1, int(resources.get("CPU", 1)))
        n = max(1, min(self.workers or cpus, jobs))
        per = max(1, cpus // n)
        return ActorShape(n, {"num_cpus": per}, "cpu", per)

    def actor_class(self, ray, cls: type, shape: ActorShape):
        return ray.remote(cls).options(
            max_restarts=-1, max_task_retries=TASK_RETRIES, **shape.options
        )

    def ordered_map(
        self, cls: type, model: bytes, device: str, jobs: Iterable, purpose: str
    ) -> Iterator:
        """``cls(model, device, threads).run(job)`` for every job on a pool of actors,
        results in the order of `jobs`, one job in flight per actor. An OnnxSplitError raised
        in an actor is raised here as itself."""
        ray = self.connect(purpose)
        from ray.util import ActorPool

        shape = self.shape(ray, device, 1 << 30)
        self.workers = shape.count
        remote = self.actor_class(ray, cls, shape)
        model_ref = ray.put(model)  # held: a restarted actor is built from it again
        actors = [remote.remote(model_ref, shape.device, shape.threads) for _ in range(shape.count)]
        pool = ActorPool(actors)

        def next_result():
            try:
                return pool.get_next()
            except ray.exceptions.RayTaskError as exc:
                if isinstance(exc.cause, OnnxSplitError):
                    raise exc.cause from None
                raise

        try:
            for job in jobs:
                while not pool.has_free():
                    yield next_result()
                pool.submit(lambda actor, value: actor.run.remote(value), job)
            while pool.has_next():
                yield next_result()
        finally:
            del model_ref
            self.release(ray, actors)
