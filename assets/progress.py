"""Progress lines: to the Dagster run log and to the ``stealwatch`` logger the CLI prints."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

LOGGER = logging.getLogger("stealwatch")


def progress_for(context) -> Callable[[str], None]:
    if os.environ.get("STEALWATCH_PROGRESS") == "1" and not LOGGER.handlers:
        _print_progress()  # a process of a multiprocess run: print like the CLI does

    def say(message: str) -> None:
        context.log.info(message)
        LOGGER.info(message)

    return say


def _print_progress() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False
