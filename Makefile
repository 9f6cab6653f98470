# Two commands on a fresh machine:  make demo  (whole pipeline on generated demo data)  and  make test.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_DATA := data/demo
DEMO_RUN := runs/demo
HERLEV ?= ../shared/data/herlev
# prepare_cells' cache of decoded cells (--cache-dir; README: Data layouts), expanded by the shell
CELL_CACHE := $${CERVICAL_CYTOLOGY_CACHE:-$$HOME/.cache/cervical-cytology/cells}
# timm must never wait on the network for pretrained weights (it retries ~47 s offline)
export HF_HUB_OFFLINE := 1

.PHONY: setup demo test herlev benchmark throughput clean

setup: $(VENV)/.installed

# Reused while requirements.txt is unchanged
$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

demo: setup
	$(PY) -m tools.demo_data --out $(DEMO_DATA) --clusters-per-class 12
	$(PY) main_segment.py --data-root $(DEMO_DATA) --output-dir $(DEMO_RUN) --preset cpu
	$(PY) main_classify.py --data-root $(DEMO_DATA) --output-dir $(DEMO_RUN) --preset cpu
	$(PY) evaluate.py --data-root $(DEMO_DATA) --output-dir $(DEMO_RUN)

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

clean:
	rm -rf $(DEMO_RUN) runs/herlev
	rm -f "$(CELL_CACHE)"/cells-*.npz "$(CELL_CACHE)"/.cells-*.tmp
