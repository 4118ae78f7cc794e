"""Errors the CLI turns into a message and an exit status instead of a traceback."""


class InvcError(Exception):
    """Bad input that is not a spec: a missing file, a wrong input name, an unwritable path.

    The message already says where (path, module or input name) and what to do."""
    exit_code = 2


class CheckFailed(Exception):
    """A check ran and its numbers failed (verify, demo): exit 1."""
    exit_code = 1
