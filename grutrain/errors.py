"""The one exception type that carries a message meant for the user."""


class GrutrainError(Exception):
    """A problem the user can fix (bad config, data or checkpoint).

    The library raises it; only the CLI turns it into a message on stderr and an exit code.
    The message should name the problem and the fix in one or two lines.
    """

    exit_code = 1
