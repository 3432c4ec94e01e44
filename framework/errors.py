"""The one exception type for problems a user can fix (a bad path, a corrupt file, a wrong value).

The CLI prints these as a single line, ``litzoo: error: <message>``, instead of a traceback.
Messages name the file or value at fault and say what was expected.
"""

from __future__ import annotations


class LitzooError(Exception):
    """A problem with the user's input (files, configs, checkpoints) rather than a bug in litzoo."""


def one_line(error: BaseException) -> str:
    """The user-facing line of ``error``.

    DataLoader workers re-raise exceptions in the main process with the worker's traceback folded
    into the message ("Caught LitzooError in DataLoader worker process 0. Original Traceback ...");
    the line the user needs is the original message, the last line of that text.
    """
    text = str(error).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        # "litzoo.framework.errors.LitzooError: cannot read image ..." -> "cannot read image ..."
        prefix, sep, message = last.partition(": ")
        text = message if sep and prefix.endswith("Error") else last
    return text
