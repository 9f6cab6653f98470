"""Console messages."""
_said = set()


def say_once(message: str, file=None) -> None:
    """Print a note once per process (the out-of-fold models would repeat it); file: sys.stdout unless given."""
    if message not in _said:
        _said.add(message)
        print(message, file=file)
