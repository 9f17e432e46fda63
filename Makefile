# Two commands do all the set-up and work: `make demo` and `make test` (the fast tier; `make
# test-all` runs every test, as CI does).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo demo-run test test-all lint venv clean results

# The demo: train SRCNN briefly on the photos bundled with scikit-image (no network),
# inspect the checkpoint, and super-resolve the held-back photos with it (and with the
# shipped checkpoint, when there is one). tests/test_super_resolve.py runs demo-run small.
DEMO_DIR ?= demo
DEMO_EPOCHS ?= 60
DEMO_PATCHES ?= 128
DEMO_PATCH_SIZE ?= 48

# (Re)create the virtual environment when it is missing or the requirements changed.
$(STAMP): requirements.txt requirements-dev.txt requirements-onnx.txt requirements-tensorboard.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

venv: $(STAMP)

demo: $(STAMP)
	@$(MAKE) --no-print-directory demo-run PY=$(PY)

demo-run:
	$(PY) train.py train --train-data sample-train --val-data sample-test --num-epoch $(DEMO_EPOCHS) \
	    --patches-per-image $(DEMO_PATCHES) --patch-size $(DEMO_PATCH_SIZE) --batch-size 32 --lr 2e-3 \
	    --schedule cosine --val-freq 10 --save-freq $(DEMO_EPOCHS) --out-dir $(DEMO_DIR)/run --overwrite --quiet
	$(PY) train.py inspect $(DEMO_DIR)/run/last.pth --plot $(DEMO_DIR)/curves.png --overwrite
	@if [ -f checkpoints/srcnn_x3.pth ]; then \
	    echo "--- the shipped checkpoint, checkpoints/srcnn_x3.pth:"; \
	    $(PY) super_resolve.py --checkpoint checkpoints/srcnn_x3.pth --dataset sample-test --quiet \
	        --compare-dir $(DEMO_DIR)/panels-shipped --overwrite; fi
	@echo "--- the model trained just now, on the held-back photos:"
	$(PY) super_resolve.py --checkpoint $(DEMO_DIR)/run/last.pth --dataset sample-test --quiet \
	    --save --out-dir $(DEMO_DIR)/sr --compare-dir $(DEMO_DIR)/panels --overwrite
	@echo "comparison panel: $(DEMO_DIR)/panels/chelsea_compare.png (training curves: $(DEMO_DIR)/curves.png)"

# The results tables of the shipped checkpoints (checkpoints/README.md is written from them).
# Multispectral models are scored by Wald's protocol on their held-out region and the BigEarthNet
# patches (tools/wald_study.py); the others on Set5 and Set14.
RS_CHECKPOINTS := checkpoints/s2_20m_x2.pth
BIGEARTHNET := $(SR_DATA_ROOT)/RS-sample/bigearthnet-s2
results: $(STAMP)
	mkdir -p checkpoints/results
	for ckpt in $(filter-out $(RS_CHECKPOINTS),$(wildcard checkpoints/*.pth)); do for set in Set5 Set14; do \
	    out=checkpoints/results/$$(basename $$ckpt .pth)_$$set.json; \
	    $(PY) super_resolve.py --checkpoint $$ckpt --dataset $$set --json > $$out.tmp && mv $$out.tmp $$out \
	    || { rm -f $$out.tmp; exit 2; }; done; done
	for ckpt in checkpoints/piunet*.pth; do \
	    out=checkpoints/results/$$(basename $$ckpt .pth)_PROBAV-sample.json; \
	    $(PY) super_resolve.py --checkpoint $$ckpt --dataset PROBAV-sample --out-dir results/PROBAV-sample \
	        --json > $$out.tmp && mv $$out.tmp $$out || { rm -f $$out.tmp; exit 2; }; done
	for ckpt in $(wildcard $(RS_CHECKPOINTS)); do \
	    $(PY) tools/wald_study.py --checkpoint $$ckpt --on $(BIGEARTHNET)/S2A_MSIL2A_20170617T113321_4_55 \
	        --on $(BIGEARTHNET)/S2A_MSIL2A_20171221T112501_56_35 \
	        --json checkpoints/results/$$(basename $$ckpt .pth)_wald.json --overwrite || exit 2; done

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# The fast tier: lint and every test not marked `slow` (about 3 minutes on 2 CPU cores).
test: $(STAMP) lint
	$(PY) -m pytest -q -m "not slow"

# Everything: lint and the whole suite (what .ci/run runs).
test-all: $(STAMP) lint
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
