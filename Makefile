# Two commands on a fresh machine:  make demo  (whole pipeline on generated demo data)  and  make test.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_DATA := data/demo
DEMO_RUN := runs/demo
# The demo keeps every stage but trains each for about a minute, not the preset's half hour (docs/speed.md: the demo's
# stages timed); tools/demo_check.py then stops it if a stage learned nothing.
# Cluster images per class: ~160 cells, so that the test split holds ~25
DEMO_CLUSTERS := 8
# Stage 1 on cells: no out-of-fold models (they keep masks honest on real cells; the demo's are easy)
DEMO_SEGMENT_FLAGS := --preset cpu --epochs 8 --oof-folds 0
# Stage 2: on the demo's cells its validation accuracy peaked at epoch 5 of these 8
DEMO_CLASSIFY_FLAGS := --preset cpu --epochs 8
# Field models: tiles and cell windows shrunk to the demo's small cluster images (384 x 288 px)
DEMO_FIELD_FLAGS := --preset cpu --epochs 4 --instance-epochs 6 --img-size 128 --instance-size 96
# A whole slide as a scanner writes it (pyramidal JPEG TIFF, 0.5 um/px) holding 15 of the demo's cluster images on
# glass; 50 cells suffice for its call (a real slide needs 5000: predict.py --min-cells)
DEMO_SLIDE := $(DEMO_DATA)_slide/demo_slide.tiff
DEMO_SLIDE_FLAGS := --side 8192 --mpp 0.5
HERLEV ?= ../shared/data/herlev
CRIC ?= ../shared/data/cric
CRIC_RUN := runs/cric
# CRIC outlines no cell: the classifier's masks come from stage 1 trained on Herlev's outlined cells (all CRIC cells
# are new to it, so no out-of-fold models)
CRIC_SEGMENT_FLAGS := --preset cpu --epochs 12 --oof-folds 0 --skip-export
# Field models learn from the points (tools/fields/pseudo_masks.py); the instance model from 400 of the grown cells
CRIC_FIELD_FLAGS := --preset cpu --epochs 5 --instance-epochs 2 --instance-cells 400
CRIC_CLASSIFY_FLAGS := --preset cpu --epochs 8
# prepare_cells' cache of decoded cells (--cache-dir; README: Data layouts), expanded by the shell
CELL_CACHE := $${CERVICAL_CYTOLOGY_CACHE:-$$HOME/.cache/cervical-cytology/cells}
# timm must never wait on the network for pretrained weights (it retries ~47 s offline)
export HF_HUB_OFFLINE := 1

.PHONY: setup demo test herlev cric benchmark throughput gpu-check clean

# Printed at the end of `make demo`: what to open, then what to try on one's own images
define DEMO_NEXT

Open:
  $(DEMO_RUN)/outputs/eval/report.html             both cell stages on the test split, in one page
  $(DEMO_RUN)/outputs/fields/*/*/002_overlay.png   every cell found in the crowded clusters, coloured by class
  $(DEMO_RUN)/outputs/slide/demo_slide_report.html   the slide's answer: its call, counts and most suspicious cells
Review the slide (deep zoom, gallery, decisions kept; then open http://127.0.0.1:8765/):
  $(PY) review.py $(DEMO_RUN)/outputs/slide
Next, on your own images (each script's -h opens with an example):
  $(PY) predict.py MY_CELLS/ --run-dir $(DEMO_RUN)                    # single cells
  $(PY) predict.py 'MY_FIELDS/*.png' --fields --run-dir $(DEMO_RUN)   # fields of view
  $(PY) predict.py MY_SLIDES/ --fields --run-dir $(DEMO_RUN)          # whole slides (.svs .ndpi .mrxs .tiff ...)
  $(PY) main_segment.py --data-root MY_DATA --run-dir runs/mine --preset cpu   # train on yours; then main_classify.py
endef
export DEMO_NEXT

setup: $(VENV)/.installed

# Reused while requirements.txt is unchanged
$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

# Cells: both stages and the evaluation; fields: the field models on the demo's cluster images, then every cell of the
# crowded clusters found, separated and classified, and a generated slide screened; then the check that each stage
# learned, and what to look at
demo: setup
	$(PY) -m tools.demo_data --out $(DEMO_DATA) --clusters-per-class $(DEMO_CLUSTERS)
	$(PY) main_segment.py --data-root $(DEMO_DATA) --run-dir $(DEMO_RUN) $(DEMO_SEGMENT_FLAGS)
	$(PY) main_classify.py --data-root $(DEMO_DATA) --run-dir $(DEMO_RUN) $(DEMO_CLASSIFY_FLAGS)
	$(PY) evaluate.py --data-root $(DEMO_DATA) --run-dir $(DEMO_RUN)
	$(PY) main_segment.py --data-root $(DEMO_DATA) --layout sipakmed-fields --run-dir $(DEMO_RUN) $(DEMO_FIELD_FLAGS)
	$(PY) predict.py '$(DEMO_DATA)/*/*/002.bmp' --fields --run-dir $(DEMO_RUN) --output-dir $(DEMO_RUN)/outputs/fields
	$(PY) -m tools.fields.make_slide '$(DEMO_DATA)/*/*/00[1-3].bmp' --out $(DEMO_SLIDE) $(DEMO_SLIDE_FLAGS)
	$(PY) predict.py $(DEMO_SLIDE) --fields --run-dir $(DEMO_RUN) --output-dir $(DEMO_RUN)/outputs/slide --min-cells 50
	$(PY) -m tools.demo_check --data-root $(DEMO_DATA) --run-dir $(DEMO_RUN)
	@echo "$$DEMO_NEXT"

# Lint and import order first (ruff, configured in pyproject.toml): seconds, and CI fails on the first
test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest tests -q

herlev: setup
	$(PY) main_segment.py --data-root $(HERLEV) --output-dir runs/herlev --preset cpu
	$(PY) main_classify.py --data-root $(HERLEV) --output-dir runs/herlev --preset cpu
	$(PY) evaluate.py --data-root $(HERLEV) --output-dir runs/herlev

# Real Pap smears (README: Real Pap smears): stage 1 on Herlev's cells, the field models on CRIC's points, the
# classifier in Bethesda's classes, then the screening benchmark on the run's test fields and a slide of them
cric: setup
	$(PY) main_segment.py --data-root $(HERLEV) --run-dir $(CRIC_RUN) $(CRIC_SEGMENT_FLAGS)
	$(PY) main_segment.py --data-root $(CRIC) --layout cric-fields --run-dir $(CRIC_RUN) $(CRIC_FIELD_FLAGS)
	$(PY) main_classify.py --data-root $(CRIC) --layout cric --run-dir $(CRIC_RUN) $(CRIC_CLASSIFY_FLAGS)
	$(PY) evaluate.py --data-root $(CRIC) --layout cric --run-dir $(CRIC_RUN)
	$(PY) benchmarks/screening.py --data-root $(CRIC) --run-dir $(CRIC_RUN)

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
	rm -rf $(DEMO_RUN) runs/herlev $(dir $(DEMO_SLIDE))
	rm -f "$(CELL_CACHE)"/cells-*.npz "$(CELL_CACHE)"/.cells-*.tmp
