"""The one exception type that signals a user mistake."""


class UserError(Exception):
    """Bad input from the user: reported as one line on stderr, exit status 2.

    Raise it with a message that names the problem and says what to do, e.g.
    `UserError("--teacher_dir /x does not exist: pass the directory of an export")`.
    """
