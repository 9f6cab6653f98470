"""Errors meant for the person running a script, printed as one line without a traceback."""
import errno
import functools
import sys

# Exit codes: 2 for a problem with the input (argparse uses it too), 130 for Ctrl-C (128 + SIGINT, as shells do)
USER_ERROR_EXIT, INTERRUPTED_EXIT = 2, 130
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class UserError(Exception):
    """A problem with the user's input (a file, a flag, a folder): say which, what is wrong, what to do."""


NOTHING_KEPT = "nothing was written yet"
_kept = {"note": NOTHING_KEPT}


def note_kept(text: str) -> None:
    """Say what a run has safely written so far; an interruption or a full disk reports it in its one line."""
    _kept["note"] = text


def is_out_of_memory(error: BaseException) -> bool:
    """Python's MemoryError, PyTorch's CUDA OutOfMemoryError, or its CPU allocator's RuntimeError."""
    return isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError" or (
        isinstance(error, RuntimeError) and ("can't allocate memory" in str(error) or "not enough memory" in str(error)))


def exit_on_user_error(main):
    """Run `main`; a UserError, Ctrl-C, a full disk or running out of memory become one line on stderr and an exit
    code, not a traceback."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        note_kept(NOTHING_KEPT)  # each run says what IT kept, not what an earlier main() of this process did
        try:
            return main(*args, **kwargs)
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(USER_ERROR_EXIT)
        except KeyboardInterrupt:
            print(f"\ninterrupted: {_kept['note']}", file=sys.stderr)
            sys.exit(INTERRUPTED_EXIT)
        except OSError as error:
            if error.errno not in DISK_FULL_ERRNOS:
                raise
            print(f"error: disk full writing {error.filename or 'a file'}: {_kept['note']}; free space and run again",
                  file=sys.stderr)
            sys.exit(USER_ERROR_EXIT)
        except (MemoryError, RuntimeError) as error:  # an --img-size or --batch-size too large for this machine
            if not is_out_of_memory(error):
                raise
            print(f"error: out of memory ({type(error).__name__}): {_kept['note']}; lower --batch-size, --img-size or "
                  f"--block-size, or free memory", file=sys.stderr)
            sys.exit(USER_ERROR_EXIT)

    return wrapper
