"""utils/errors.py: what a script's user sees when it stops."""
import pytest

from utils.errors import USER_ERROR_EXIT, UserError, exit_on_user_error


def stopping_with(error):
    @exit_on_user_error
    def main():
        raise error

    return main


@pytest.mark.parametrize("error", [MemoryError(), RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. "
                                                                "DefaultCPUAllocator: can't allocate memory: you tried "
                                                                "to allocate 51539607552 bytes.")],
                         ids=["python", "torch_cpu"])
def test_running_out_of_memory_is_one_line_with_what_to_lower(capsys, error):
    """An --img-size 8192 or a huge --batch-size ended in PyTorch's traceback."""
    with pytest.raises(SystemExit) as exit_info:
        stopping_with(error)()
    assert exit_info.value.code == USER_ERROR_EXIT
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: out of memory") and "lower --batch-size" in lines[0]


def test_other_errors_keep_their_traceback_and_user_errors_their_line(capsys):
    with pytest.raises(RuntimeError, match="a bug"):
        stopping_with(RuntimeError("a bug"))()
    with pytest.raises(SystemExit):
        stopping_with(UserError("cells/1.png: cannot read this image; replace it"))()
    assert capsys.readouterr().err == "error: cells/1.png: cannot read this image; replace it\n"
