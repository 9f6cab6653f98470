"""Every script's --help opens with a usage example: the first thing a newcomer reads after argparse's usage line."""
import importlib
import re

import pytest

# module -> the name its example runs (scripts by file name; the tools/ ones as python -m tools.NAME)
SCRIPTS = {
    "main_segment": "main_segment.py",
    "main_classify": "main_classify.py",
    "evaluate": "evaluate.py",
    "predict": "predict.py",
    "export_onnx": "export_onnx.py",
    "review": "review.py",
    "tools.demo_data": "tools.demo_data",
    "tools.demo_check": "tools.demo_check",
    "tools.fields.make_slide": "tools.fields.make_slide",
    "benchmarks.field_speed": "benchmarks/field_speed.py",
    "benchmarks.gpu_check": "benchmarks/gpu_check.py",
    "benchmarks.herlev": "benchmarks/herlev.py",
    "benchmarks.onnx_steps": "benchmarks/onnx_steps.py",
    "benchmarks.predict_speed": "benchmarks/predict_speed.py",
    "benchmarks.throughput": "benchmarks/throughput.py",
    "benchmarks.slide_speed": "benchmarks/slide_speed.py",
    "benchmarks.slide_accuracy": "benchmarks/slide_accuracy.py",
    "benchmarks.screening": "benchmarks/screening.py",
    "benchmarks.cric_detection": "benchmarks/cric_detection.py",
    "benchmarks.review_speed": "benchmarks/review_speed.py",
}


@pytest.mark.parametrize("module_name", sorted(SCRIPTS))
def test_help_opens_with_an_example_on_its_own_line(module_name, capsys):
    module = importlib.import_module(module_name)
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    usage, description = help_text.split("\n\n", 2)[:2]
    assert usage.startswith("usage:")
    example = description.splitlines()[0]  # the formatter keeps the description's line breaks
    assert re.fullmatch(rf"example: python (-m )?{re.escape(SCRIPTS[module_name])}( .*)?", example), example
