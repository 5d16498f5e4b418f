"""Every incident page of a window: the store read a batch of pages at a time (one query for
all their keys' events, one for their canary hits, the per-user features once), the pages
rendered in a few processes. The pages are the ones :func:`reports.pages.write_subject_page`
writes one at a time, byte for byte."""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import duckdb

from audits.cores import default_workers
from reports import data as d
from reports.pages import (
    Population,
    SubjectData,
    own_evidence,
    render_subject_page,
    triaged_incidents,
)

BATCH_PAGES = 32  # pages whose events one query reads (memory: their keys' events at once)
MIN_POOL_PAGES = 16  # fewer pages are rendered in this process (starting workers costs more)


@dataclass(frozen=True)
class Shared:
    """What every incident page of the window draws on."""

    window: d.Window
    scores: d.Scores | None
    population: Population
    audit_dir: Path
    incidents: list[dict]


@dataclass(frozen=True)
class PageTask:
    """One page to render: where, about whom, and what it read from the store."""

    path: Path
    users: list[str]
    incident: dict
    subject: SubjectData


def write_incident_pages(
    con: duckdb.DuckDBPyConnection,
    window: d.Window,
    out: Path,
    say: Callable[[str], None] = lambda _: None,
    workers: int = 0,
    min_pool_pages: int = MIN_POOL_PAGES,
) -> int:
    """A page per listed incident and per canary incident merged into one, under ``out``;
    ``workers`` processes render them (0: one per core, at most 4; 1, or fewer than
    ``min_pool_pages`` pages: this process). The number of pages written."""
    scores = d.load_scores(out, con, window)
    listed = triaged_incidents(con, window, scores)
    every = [*listed, *(c for i in listed for c in i["canaries"])]
    if not every:
        return 0
    population = Population.of(d.population_sample(con, window))
    shared = Shared(window, scores, population, out, listed)
    tasks = _tasks(con, window, out, every)
    workers = workers or default_workers()
    if workers <= 1 or len(every) < min_pool_pages:
        _set_shared(shared)
        rendered = (_render(task) for task in tasks)
    else:
        rendered = _render_in_pool(shared, tasks, workers)
    for number, incident_id in enumerate(rendered, 1):
        say(f"incident page {number}/{len(every)}: {incident_id}")
    return len(every)


def _tasks(
    con: duckdb.DuckDBPyConnection, window: d.Window, out: Path, every: list[dict]
) -> Iterator[PageTask]:
    """Each page's task, the store read once per batch of :data:`BATCH_PAGES` pages."""
    features = d.feature_frame(con, window)
    for first in range(0, len(every), BATCH_PAGES):
        batch = every[first : first + BATCH_PAGES]
        members = [[str(member) for member in incident["members"]] for incident in batch]
        keys = sorted({user for users in members for user in users})
        events = d.subject_events(con, keys, window)
        hits = d.canary_hits(con, keys, window, limit=None)
        for incident, users in zip(batch, members, strict=True):
            evidence = [] if own_evidence(incident) else d.percentiles_of(features, users)
            subject = SubjectData(d.events_of(events, users), evidence, d.hits_of(hits, users))
            yield PageTask(out / incident["page"], users, incident, subject)


_SHARED: Shared | None = None  # this process's, set once (a worker's by its initializer)


def _set_shared(shared: Shared) -> None:
    global _SHARED
    _SHARED = shared


def _render(task: PageTask) -> str:
    """Render one page with this process's :class:`Shared`; the incident's id."""
    shared = _SHARED
    render_subject_page(
        task.path,
        task.subject,
        window=shared.window,
        users=task.users,
        title="Incident",
        incident=task.incident,
        scores=shared.scores,
        population=shared.population,
        audit_dir=shared.audit_dir,
        incidents=shared.incidents,
    )
    return str(task.incident["incident_id"])


def _render_in_pool(shared: Shared, tasks: Iterator[PageTask], workers: int) -> Iterator[str]:
    """The pages rendered in ``workers`` processes, in order, at most two per worker in flight
    (so at most a few pages' events are held)."""
    context = multiprocessing.get_context("spawn")  # no fork of DuckDB's and Polars' threads
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_set_shared, initargs=(shared,)
    ) as pool:
        pending: deque = deque()
        for task in tasks:
            pending.append(pool.submit(_render, task))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
