"""The one exception of the cluster manager."""


class ClusterError(RuntimeError):
    """The cluster could not do what was asked; the message says what to do instead.

    `exit_status` is what the command line exits with: 2 when the server is not installed,
    1 for everything else.
    """

    def __init__(self, message: str, *, exit_status: int = 1) -> None:
        super().__init__(message)
        self.exit_status = exit_status
