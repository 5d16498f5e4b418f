"""Subjects estimated in a process pool: each subject's damage and, for incidents, its defence
replay (:class:`SubjectTask`), in order, with at most a few subjects' traffic in flight."""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from audits.forensics.damage import Damage, damage_of_traffic
from audits.forensics.defences import DefenceSettings, LegitCosts
from audits.forensics.replay import replay_defences
from audits.forensics.traffic import Traffic


@dataclass(frozen=True)
class SubjectTask:
    """What every subject's estimate shares: the reference, the probability columns, the
    training budget and, for the replays, the defences and the legitimate users' costs."""

    reference_X: np.ndarray
    reference_y: np.ndarray
    columns: np.ndarray | None
    seed: int
    budget: int
    defences: DefenceSettings
    legit: LegitCosts | None

    def estimate(self, t: Traffic, replay: bool) -> tuple[Damage, dict | None]:
        """One subject's damage and, when ``replay``, its defence replay."""
        damage = damage_of_traffic(
            t,
            self.reference_X,
            self.reference_y,
            columns=self.columns,
            seed=self.seed,
            budget=self.budget,
        )
        if not replay:
            return damage, None
        result = replay_defences(
            t,
            self.legit,
            self.reference_X,
            self.reference_y,
            columns=self.columns,
            baseline=damage.fidelity,
            soft_baseline=damage.fidelity_probabilities,
            settings=self.defences,
            budget=self.budget,
            surrogates=(damage.surrogate, damage.surrogate_probabilities),
        )
        return damage, result


def estimate_subjects(
    task: SubjectTask, subjects: Iterable[tuple[object, Traffic, bool]], workers: int = 1
) -> Iterator[tuple[object, Damage, dict | None]]:
    """``(key, damage, replay)`` for each ``(key, traffic, replay?)`` in order, on one BLAS
    thread per process. With ``workers`` > 1 the subjects are estimated in that many
    processes, at most ``workers`` subjects' traffic in flight at a time (so memory stays a
    few subjects'); the results are the same, since every subject's draws are its own."""
    if workers <= 1:
        with threadpool_limits(1):
            for key, t, replay in subjects:
                yield key, *task.estimate(t, replay)
        return
    context = multiprocessing.get_context("spawn")  # no fork of DuckDB's and Polars' threads
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_one_thread) as pool:
        pending: deque = deque()
        for key, t, replay in subjects:
            pending.append((key, pool.submit(task.estimate, t, replay)))
            if len(pending) >= workers:
                done_key, future = pending.popleft()
                yield done_key, *future.result()
        while pending:
            done_key, future = pending.popleft()
            yield done_key, *future.result()


def _one_thread() -> None:
    """One thread per worker for its lifetime: the processes are the parallelism (OpenMP
    threads spinning beside another process's on the same cores slow both many times over).
    The limit holds for libraries already loaded, so scikit-learn's OpenMP is loaded first."""
    from sklearn.ensemble import HistGradientBoostingClassifier  # noqa: F401

    threadpool_limits(1)
