"""One error type for everything a user can get wrong.

The CLI prints ``depthprune: error: <message>`` and exits with status 2 for these; the message names the problem
and the fix in one line.
"""


class DepthpruneError(Exception):
    """Bad input or an impossible request, described in one line that says how to fix it."""
