"""Errors meant for the person running a script, printed as one line without a traceback."""
import functools
import sys


class UserError(Exception):
    """A problem with the user's input (a file, a flag, a folder): say which, what is wrong, what to do."""


def exit_on_user_error(main):
    """Run `main`; a UserError becomes `error: <message>` on stderr and exit code 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)

    return wrapper
