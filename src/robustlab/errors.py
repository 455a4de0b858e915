"""The one exception type for bad user input.

Anything a user can get wrong (config, data, checkpoint, command-line arguments) raises
:class:`UserError` with a one-line message that names the problem and the fix. The CLI prints
the message and exits with code 2; the library never calls ``sys.exit`` itself.
"""

from __future__ import annotations

import errno


class UserError(ValueError):
    """Bad input from the user: printed as one line by the CLI, exit code 2."""


FILE_SYSTEM_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


def file_system_problem(exc: OSError) -> str | None:
    """One line for an OSError the user can fix (no permission, read-only or full disk), else None."""
    where = f" {exc.filename}" if exc.filename else ""
    if exc.errno == errno.ENAMETOOLONG:
        return f"path{where} is too long for the file system; choose a shorter name, out_dir or --out"
    if exc.errno not in FILE_SYSTEM_ERRNOS:
        return None
    reason = exc.strerror or type(exc).__name__
    return f"cannot write{where} ({reason}); choose a writable out_dir/--out or fix the folder's permissions or space"
