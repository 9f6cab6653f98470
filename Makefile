# Two commands on a fresh machine:  make demo  (whole pipeline on generated demo data)  and  make test.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_DATA := data/demo
DEMO_RUN := runs/demo
DEMO_FIELD_EPOCHS := 10
HERLEV ?= ../shared/data/herlev
# prepare_cells' cache of decoded cells (--cache-dir; README: Data layouts), expanded by the shell
CELL_CACHE := $${CERVICAL_CYTOLOGY_CACHE:-$$HOME/.cache/cervical-cytology/cells}
# timm must never wait on the network for pretrained weights (it retries ~47 s offline)
export HF_HUB_OFFLINE := 1

.PHONY: setup demo test herlev benchmark throughput gpu-check clean

setup: $(VENV)/.installed

# Reused while requirements.txt is unchanged
$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

# Cells: both stages and the evaluation; fields: the field models on the demo's cluster images (fewer epochs than
# the preset: the demo's clusters are small), then every cell of four crowded clusters found, separated and classified
demo: setup
	$(PY) -m tools.demo_data --out $(DEMO_DATA) --clusters-per-class 12
	$(PY) main_segment.py --data-root $(DEMO_DATA) --run-dir $(DEMO_RUN) --preset cpu
	$(PY) main_classify.py --data-root $(DEMO_DATA) --run-dir $(DEMO_RUN) --preset cpu
	$(PY) evaluate.py --data-root $(DEMO_DATA) --run-dir $(DEMO_RUN)
	$(PY) main_segment.py --data-root $(DEMO_DATA) --layout sipakmed-fields --run-dir $(DEMO_RUN) --preset cpu \
		--epochs $(DEMO_FIELD_EPOCHS) --instance-epochs $(DEMO_FIELD_EPOCHS)
	$(PY) predict.py '$(DEMO_DATA)/*/*/002.bmp' --fields --run-dir $(DEMO_RUN) --output-dir $(DEMO_RUN)/outputs/fields

test: setup
	$(PY) -m pytest tests -q

herlev: setup
	$(PY) main_segment.py --data-root $(HERLEV) --output-dir runs/herlev --preset cpu
	$(PY) main_classify.py --data-root $(HERLEV) --output-dir runs/herlev --preset cpu
	$(PY) evaluate.py --data-root $(HERLEV) --output-dir runs/herlev

# Both stages with --preset cpu on Herlev, classifier over 3 seeds, GT-mask variant: results.json + results.md
benchmark: setup
	$(PY) benchmarks/herlev.py --data-root $(HERLEV) --output-dir runs/benchmark_herlev

# Images/s of training (speed flags vs plain fp32), inference and the data loader, both models, --preset cpu
throughput: setup
	$(PY) benchmarks/throughput.py --preset cpu

# On a GPU: both stages at the full default configuration (ConvNeXt-Tiny, 256 px) for a few epochs with the speed
# flags, the throughput table with and without them: runs/gpu_check/gpu_check.{json,md}
gpu-check: setup
	$(PY) benchmarks/gpu_check.py --data-root $(HERLEV) --output-dir runs/gpu_check

clean:
	rm -rf $(DEMO_RUN) runs/herlev
	rm -f "$(CELL_CACHE)"/cells-*.npz "$(CELL_CACHE)"/.cells-*.tmp
