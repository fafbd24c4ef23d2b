"""Where units run: in this process (``local``, the default) or on a Ray cluster (``ray``).

Both engines take the same units (onnxsplit.eval.shards) and hand each finished one to
``on_done`` the moment it completes, so a run that stops (Ctrl-C, a crash, a lost machine)
keeps everything finished before. The Ray engine runs one EvaluationWorker actor per CPU of
the cluster, or per GPU where it has GPUs (onnxsplit.distributed); a worker that dies is
restarted by Ray and its unit redone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from onnxsplit.distributed import TASK_RETRIES, RayCluster, check_engine
from onnxsplit.errors import OnnxSplitError
from onnxsplit.eval.shards import Unit
from onnxsplit.eval.worker import EvaluationWorker, WorkerSettings

OnDone = Callable[[Unit, dict], None]
Arrays = tuple[np.ndarray, np.ndarray, np.ndarray | None]  # inputs, targets, masks (or None)


class Engine(Protocol):
    """Runs units and hands each finished one to `on_done` as it completes."""

    name: str
    workers: int | None

    def run(
        self, settings: WorkerSettings, units: list[Unit], arrays: Arrays, on_done: OnDone
    ) -> None: ...


@dataclass
class LocalEngine:
    """One worker in this process, units in order."""

    name: str = "local"
    workers: int = 1

    def run(
        self,
        settings: WorkerSettings,
        units: list[Unit],
        arrays: Arrays,
        on_done: OnDone,
    ) -> None:
        if not units:
            return
        worker = EvaluationWorker(settings)
        for unit in units:
            on_done(unit, worker.run(unit, *arrays))


@dataclass
class RayEngine:
    """EvaluationWorker actors on a Ray cluster: `address` None joins this process's cluster
    or starts a local one."""

    address: str | None = None
    workers: int | None = None  # default: one per GPU, else one per CPU of the cluster
    name: str = "ray"

    def run(
        self,
        settings: WorkerSettings,
        units: list[Unit],
        arrays: Arrays,
        on_done: OnDone,
    ) -> None:
        if not units:
            return
        cluster = RayCluster(self.address, self.workers)
        ray = cluster.connect("onnxsplit evaluate --engine ray")
        shape = cluster.shape(ray, settings.device, len(units))
        self.workers = shape.count
        settings = replace(settings, device=shape.device, threads=shape.threads)
        remote = cluster.actor_class(ray, EvaluationWorker, shape)
        # held until the end: an actor that Ray restarts is built again from this object
        settings_ref = ray.put(settings)
        actors = [remote.remote(settings_ref) for _ in range(shape.count)]
        refs = [None if a is None else ray.put(a) for a in arrays]
        queue = list(units)
        running: dict = {}  # object ref -> (unit, actor index)
        last: dict[int, str] = {}  # actor index -> the method it ran last

        def submit(index: int) -> None:
            # the same method again where possible (its compiled models are warm), else one
            # that no other actor is running
            busy = {unit.method for unit, _ in running.values()}
            pick = next((u for u in queue if u.method == last.get(index)), None)
            pick = pick or next((u for u in queue if u.method not in busy), queue[0])
            queue.remove(pick)
            last[index] = pick.method
            running[actors[index].run.remote(pick, *refs)] = (pick, index)

        try:
            for index in range(shape.count):
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
            del settings_ref
            cluster.release(ray, actors)


def make_engine(name: str, address: str | None = None, workers: int | None = None) -> Engine:
    check_engine(name, address)
    return RayEngine(address, workers) if name == "ray" else LocalEngine()
