"""Progress lines: to the Dagster run log and to the ``stealwatch`` logger the CLI prints."""

from __future__ import annotations

import logging
from collections.abc import Callable

LOGGER = logging.getLogger("stealwatch")


def progress_for(context) -> Callable[[str], None]:
    def say(message: str) -> None:
        context.log.info(message)
        LOGGER.info(message)

    return say
