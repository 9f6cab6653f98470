"""Blocks on a Dask cluster (predict.py --fields --scheduler ADDRESS): the cluster users already run.

Every worker screens blocks with tools/fields/slide.screen_block: it opens the slide by its path and loads the
models once, so the slides, the run folder and this repository must be at the same paths on every worker (a
shared file system), and the scheduler and the workers must run in this project's environment with the
repository on their path (PYTHONPATH; checked before the first block). Results come back
to predict.py, which writes them in block order: the outputs are the same bytes as a run in one process.
"""
from pathlib import Path
from typing import Tuple

from utils.errors import UserError

CONNECT_SECONDS = 10
REPO = Path(__file__).resolve().parents[2]


def dask_executor(address: str) -> Tuple[object, int]:
    """(a concurrent.futures executor over the cluster's workers, the blocks they run at once)."""
    try:
        from distributed import Client
    except ImportError:  # pragma: no cover - in requirements.txt
        raise UserError("--scheduler needs dask.distributed: pip install -r requirements.txt") from None
    try:
        client = Client(address, timeout=f"{CONNECT_SECONDS}s")
    except (OSError, TimeoutError, ValueError) as error:
        raise UserError(f"--scheduler {address}: no Dask scheduler answered within {CONNECT_SECONDS} s ({error}); start one "
                        f"(`dask scheduler`, then `dask worker {address}` on each machine) or leave --scheduler out to "
                        f"run here") from None
    threads = sum(client.nthreads().values())
    if not threads:
        client.close()
        raise UserError(f"--scheduler {address}: the cluster has no workers; start some with `dask worker {address}`")
    check_workers_import_this_project(client, address)
    return ClusterExecutor(client), threads


def check_workers_import_this_project(client, address: str) -> None:
    """The scheduler (it unpickles each task) and every worker (it runs them) must import tools.fields.slide; one
    that cannot would fail every block with Dask's own traceback, so ask them all before the first block."""
    for where, run in (("the scheduler", client.run_on_scheduler), ("a worker", client.run)):
        try:
            run(exec, "import tools.fields.slide")
        except Exception as error:  # its ImportError, raised again here by dask
            client.close()
            raise UserError(f"--scheduler {address}: {where} cannot import this project ({type(error).__name__}: "
                            f"{error}); start the scheduler and each worker in this project's environment with it on "
                            f"their path: PYTHONPATH={REPO} {REPO}/.venv/bin/dask scheduler (or worker {address})") from None


class ClusterExecutor:
    """client.get_executor() that also closes the client when the run ends."""

    def __init__(self, client):
        self.client, self.executor = client, client.get_executor(pure=False)

    def submit(self, function, *args):
        return self.executor.submit(function, *args)

    def shutdown(self, wait=True, cancel_futures=False):
        self.client.close()
