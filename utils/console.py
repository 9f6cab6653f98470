"""Console messages."""
_said = set()


def say_once(message: str, file=None) -> None:
    """Print a note once per process (the out-of-fold models would repeat it); file: sys.stdout unless given."""
    if message not in _said:
        _said.add(message)
        print(message, file=file)


def seconds_since_process_start() -> float:
    """Wall time since this process started (imports included), from /proc on Linux; nan elsewhere."""
    import os

    try:
        start_ticks = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19])
        uptime = float(open("/proc/uptime").read().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")
