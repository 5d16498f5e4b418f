"""Errors a user can fix: the CLI prints them as one line and exits with code 2."""


class InputError(Exception):
    """Bad usage or bad input (a missing path, an unreadable model, an empty data set)."""


class AuditFailed(Exception):
    """A run failed for a reason other than bad input: the CLI prints it and exits 1."""
