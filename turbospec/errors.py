"""User-facing errors: one clear line naming the problem and the fix, never a traceback."""

from __future__ import annotations


class UserError(Exception):
    """An error the user caused (bad path, unknown type, malformed file ...).

    ``str(err)`` is the whole message: what is wrong, then what to do about it.
    The CLI prints it as ``turbospec: error: <message>`` and exits with status 2.
    """

    exit_code = 2
