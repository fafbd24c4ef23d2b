"""Where units run: in this process (``local``, the default) or on a Ray cluster (``ray``).

Both engines take the same units (onnxsplit.eval.shards) and hand each finished one to
``on_done`` the moment it completes, so a run that stops (Ctrl-C, a crash, a lost machine)
keeps everything finished before.

The Ray engine starts one actor per CPU of the cluster (one onnxruntime session set per
actor, one intra-op thread per CPU it holds), or one per GPU where the cluster has GPUs (CUDA
actors, ``num_gpus=1``). An actor whose process dies is restarted by Ray and its unit is redone
(``max_restarts``, ``max_task_retries``): Ray's fault tolerance, not ours.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace

import numpy as np

from onnxsplit.errors import OnnxSplitError
from onnxsplit.eval.shards import Unit
from onnxsplit.eval.worker import EvaluationWorker, WorkerSettings

OnDone = Callable[[Unit, dict], None]
ENGINES = ("local", "ray")
TASK_RETRIES = 3  # a unit whose actor died is redone at most this often


def import_ray(purpose: str):
    from onnxsplit import extras

    try:
        import ray
    except ImportError:
        raise extras.missing("ray", purpose) from None
    return ray


@dataclass
class LocalEngine:
    """One worker in this process, units in order."""

    name: str = "local"
    workers: int = 1

    def run(
        self,
        settings: WorkerSettings,
        units: list[Unit],
        arrays: tuple[np.ndarray, np.ndarray, np.ndarray | None],
        on_done: OnDone,
    ) -> None:
        if not units:
            return
        worker = EvaluationWorker(settings)
        for unit in units:
            on_done(unit, worker.run(unit, *arrays))


@dataclass
class RayEngine:
    """Actors on a Ray cluster: `address` None starts (or joins) a local one."""

    address: str | None = None
    workers: int | None = None  # default: one per GPU, else one per CPU of the cluster
    name: str = "ray"

    def _ray(self, purpose: str):
        ray = import_ray(purpose)
        self._started = False
        # Ray's core prints a warning per actor whose constructor argument is in the object
        # store (ours is, and is held for the whole run): errors only
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")
        if not ray.is_initialized():
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
            self._started = True
        return ray

    def _shape(self, ray, device: str, units: int) -> tuple[int, dict, str, int | None]:
        """(actors, actor options, device, onnxruntime threads) for this cluster."""
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0)) if device != "cpu" else 0
        if gpus:
            n = min(self.workers or gpus, gpus)
            return max(1, min(n, units)), {"num_cpus": 1, "num_gpus": 1}, "cuda", None
        cpus = max(1, int(resources.get("CPU", 1)))
        n = max(1, min(self.workers or cpus, units))
        per = max(1, cpus // n)
        return n, {"num_cpus": per}, "cpu", per

    def run(
        self,
        settings: WorkerSettings,
        units: list[Unit],
        arrays: tuple[np.ndarray, np.ndarray, np.ndarray | None],
        on_done: OnDone,
    ) -> None:
        if not units:
            return
        ray = self._ray("onnxsplit evaluate --engine ray")
        n, options, device, threads = self._shape(ray, settings.device, len(units))
        self.workers = n
        settings = replace(settings, device=device, threads=threads)
        actor_class = ray.remote(EvaluationWorker).options(
            max_restarts=-1, max_task_retries=TASK_RETRIES, **options
        )
        # held until the end: an actor that Ray restarts is built again from this object
        settings_ref = ray.put(settings)
        actors = [actor_class.remote(settings_ref) for _ in range(n)]
        refs = [None if a is None else ray.put(a) for a in arrays]
        queue = list(units)
        running: dict = {}  # object ref -> (unit, actor)
        last: dict[int, str] = {}  # actor index -> the method it ran last

        def submit(index: int) -> None:
            busy = {unit.method for unit, _ in running.values()}
            pick = next((u for u in queue if u.method == last.get(index)), None)
            pick = pick or next((u for u in queue if u.method not in busy), queue[0])
            queue.remove(pick)
            last[index] = pick.method
            running[actors[index].run.remote(pick, *refs)] = (pick, index)

        try:
            for index in range(n):
                if queue:
                    submit(index)
            while running:
                ready, _ = ray.wait(list(running), num_returns=1)
                unit, index = running.pop(ready[0])
                try:
                    payload = ray.get(ready[0])
                except ray.exceptions.RayActorError as exc:
                    raise OnnxSplitError(
                        f"a Ray worker died {TASK_RETRIES + 1} times on {unit.key}: {exc}; "
                        "the finished shards are kept, rerun the same command to resume"
                    ) from None
                on_done(unit, payload)
                if queue:
                    submit(index)
        finally:
            for actor in actors:
                ray.kill(actor)
            if self._started:
                ray.shutdown()

    def ordered_map(
        self, actor_class: type, init: tuple, items: Iterable, purpose: str
    ) -> Iterator:
        """``actor.run(item)`` for every item on a pool of actors of `actor_class(*init)`,
        results in the order of `items`; one item in flight per actor."""
        ray = self._ray(purpose)
        n, options, _, threads = self._shape(ray, "cpu", 1 << 30)
        remote = ray.remote(actor_class).options(
            max_restarts=-1, max_task_retries=TASK_RETRIES, **options
        )
        actors = [remote.remote(*init, threads) for _ in range(n)]
        from ray.util import ActorPool

        pool = ActorPool(actors)
        try:
            for item in items:
                while not pool.has_free():
                    yield pool.get_next()
                pool.submit(lambda actor, value: actor.run.remote(value), item)
            while pool.has_next():
                yield pool.get_next()
        finally:
            for actor in actors:
                ray.kill(actor)
            if self._started:
                ray.shutdown()


def make_engine(name: str, address: str | None = None, workers: int | None = None):
    if name == "local":
        if address:
            raise OnnxSplitError("--address needs --engine ray")
        return LocalEngine()
    if name == "ray":
        return RayEngine(address, workers)
    raise OnnxSplitError(f"unknown engine '{name}'; use one of {', '.join(ENGINES)}")
