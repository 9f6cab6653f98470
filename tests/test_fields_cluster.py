"""tools/fields/cluster.py: a cluster whose scheduler or workers cannot import this project is one line saying how
to start them, before any block is sent (Dask would fail every task with its own traceback)."""
import pytest

from tools.fields.cluster import REPO, check_workers_import_this_project
from utils.errors import UserError


class FakeClient:
    """Runs functions as Client.run / run_on_scheduler do, with `tools` missing where told."""

    def __init__(self, missing_on):
        self.missing_on, self.closed = missing_on, False

    def _run(self, where, function, *args):
        if where == self.missing_on:
            raise ModuleNotFoundError("No module named 'tools'")
        function(*args)

    def run(self, function, *args):
        return self._run("workers", function, *args)

    def run_on_scheduler(self, function, *args):
        return self._run("scheduler", function, *args)

    def close(self):
        self.closed = True


@pytest.mark.parametrize("missing_on, named", [("scheduler", "the scheduler"), ("workers", "a worker")])
def test_a_cluster_that_cannot_import_the_project_is_one_line(missing_on, named):
    client = FakeClient(missing_on)
    with pytest.raises(UserError, match=f"tcp://h:8786: {named} cannot import this project .*No module named 'tools'.*"
                                        f"PYTHONPATH={REPO} "):
        check_workers_import_this_project(client, "tcp://h:8786")
    assert client.closed


def test_a_cluster_that_imports_the_project_passes():
    client = FakeClient(missing_on=None)
    check_workers_import_this_project(client, "tcp://h:8786")
    assert not client.closed
