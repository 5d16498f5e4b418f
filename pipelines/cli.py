"""The ``stealwatch`` command line: one subcommand per module in ``pipelines.commands``.

Each command module exposes ``register(subparsers)``, which adds its parser and sets
``handler`` to a function ``(args) -> int``. Errors a user can fix (``InputError``) print as
one line and exit 2; nothing reaches the user as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from audits.errors import AuditFailed, InputError

COMMAND_MODULES: tuple[str, ...] = (
    "pipelines.commands.simulate",
    "pipelines.commands.audit",
    "pipelines.commands.investigate",
    "pipelines.commands.evaluate",
    "pipelines.commands.gate",
    "pipelines.commands.ownership",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stealwatch",
        description="Forensic audits of prediction-API logs: extraction, membership leakage, "
        "release gate.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", message=r".*currently in (beta|preview).*")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except InputError as exc:
        print(f"stealwatch: error: {exc}", file=sys.stderr)
        return 2
    except AuditFailed as exc:
        print(f"stealwatch: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stealwatch: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    """The console script. Every file and connection is closed by the time ``main`` returns;
    exiting without interpreter finalisation skips a spurious nanobind "leaked instances"
    report that DuckDB 2.0's bindings print at shutdown when skops has been imported."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
