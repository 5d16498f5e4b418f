"""How many worker processes a step may start on this machine."""

import os

MAX_WORKERS = 4


def default_workers(limit: int = MAX_WORKERS) -> int:
    """One process per core this process may use, at most ``limit``."""
    usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return max(1, min(limit, len(usable) if usable else os.cpu_count() or 1))
