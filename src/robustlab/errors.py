"""The one exception type for bad user input.

Anything a user can get wrong (config, data, checkpoint, command-line arguments) raises
:class:`UserError` with a one-line message that names the problem and the fix. The CLI prints
the message and exits with code 2; the library never calls ``sys.exit`` itself.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input from the user: printed as one line by the CLI, exit code 2."""
