"""Errors a user can fix or must be told about; `tree.on_error` turns them into short replies."""

from __future__ import annotations


class UserFacingError(Exception):
    """A mistake or refusal shown to the user as a short ephemeral message saying what to do."""
