"""Exceptions that reach the user: each names the case and file it concerns."""

from __future__ import annotations

from pathlib import Path


class OsteoscopeError(Exception):
    """Base class for errors meant to be shown to a user without a traceback."""


class ConfigError(OsteoscopeError):
    """An invalid configuration value or combination."""


class DataError(OsteoscopeError):
    """A problem with one case, file or manifest, described in plain words.

    Args:
        message: What is wrong, and where possible what to do about it (line breaks become spaces).
        case_id: The manifest case the problem belongs to, if known.
        path: The file concerned, if any.
    """

    def __init__(self, message: str, *, case_id: str | None = None, path: str | Path | None = None) -> None:
        self.reason = " ".join(message.split())  # one line, even when a library's message has several
        self.case_id = case_id
        self.path = str(path) if path is not None else None
        where = []
        if case_id is not None:
            where.append(f"case {case_id!r}")
        if self.path is not None:
            where.append(f"file {self.path}")
        prefix = f"{', '.join(where)}: " if where else ""
        super().__init__(prefix + self.reason)

    def with_case(self, case_id: str) -> DataError:
        """Return a copy of this error that also names ``case_id``."""
        return DataError(self.reason, case_id=case_id, path=self.path)
