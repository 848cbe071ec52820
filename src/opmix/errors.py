"""The one exception type for problems a user can fix (bad input, bad environment)."""


class OpmixError(Exception):
    """A user-fixable problem. Its message is one line: what is wrong, then how to fix it.

    The CLI prints it as ``opmix: error: <message>`` and exits with code 2.
    """

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        message = problem if fix is None else f"{problem}; fix: {fix}"
        super().__init__(" ".join(message.split()))  # always one line


class RunLockedError(OpmixError):
    """Another opmix process holds the run directory."""
