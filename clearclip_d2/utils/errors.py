"""User-facing errors.

Every problem a user can fix (a bad config value, a missing file, a dataset that was not
prepared) is raised as :class:`ClearCLIPError` where the bad value enters, with a message
that names the value and the fix. The command-line tools print it as one line and exit
with status 2 instead of showing a traceback.
"""


class ClearCLIPError(RuntimeError):
    """A problem with the user's input, described in one line with its fix."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def user_message(exc: BaseException) -> str:
    """The one-line message of a :class:`ClearCLIPError`, also when a DataLoader worker or a
    spawned process re-raised it with the original traceback folded into the text."""
    message = str(exc)
    marker = "ClearCLIPError: "
    if marker in message:
        message = message.rsplit(marker, 1)[1]
    return " ".join(message.split())


def is_user_error(exc: BaseException) -> bool:
    """True for a ClearCLIPError, also one re-raised from a worker under another type."""
    return isinstance(exc, ClearCLIPError) or "ClearCLIPError: " in str(exc)


def some_values(values, limit: int = 10) -> str:
    """``"3, 7, 200, ..."``: the first ``limit`` values of a sequence, for an error message."""
    values = list(values)
    return ", ".join(str(v) for v in values[:limit]) + (", ..." if len(values) > limit else "")
