# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := demo-output

.PHONY: demo test install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test,export]"
	touch $(STAMP)

# The whole story on embedded defaults (a new local Ray in each step, local folders, this CPU):
# synthetic train + held-out sets -> train tiny_fcos on 2 Ray Train workers -> detect on the held-out
# images with the trained model -> evaluate against their ground truth -> the HTML report of it all.
# Everything lands in demo-output/.
# A second `make demo` finds the training run complete and reuses it.
demo: $(STAMP)
	$(BIN)/detbatch synth $(DEMO)/data/train --images 2000 --seed 0
	$(BIN)/detbatch synth $(DEMO)/data/holdout --images 200 --seed 1
	$(BIN)/detbatch train --config configs/demo-train.yaml --ray-address local
	$(BIN)/detbatch detect --config configs/local.yaml --overwrite --ray-address local
	$(BIN)/detbatch evaluate --detections $(DEMO)/detections --ground-truth $(DEMO)/data/holdout/annotations.json \
		--out $(DEMO)/evaluation
	$(BIN)/detbatch report --detections $(DEMO)/detections --ground-truth $(DEMO)/data/holdout/annotations.json \
		--evaluation $(DEMO)/evaluation --out $(DEMO)/report
	@echo
	@echo "Where to look, under $(DEMO)/:"
	@echo "  model/            the trained checkpoint: detbatch detect --weights $(DEMO)/model (or export)"
	@echo "  train/demo/       the training run: metrics.jsonl, loss_curve.png, ap_curve.png, checkpoints"
	@echo "  detections/       held-out detections (Parquet): pandas.read_parquet('$(DEMO)/detections/detections')"
	@echo "  evaluation/       metrics.json, report.md, pr_curves.png"
	@echo "  report/           the HTML report: open file://$(CURDIR)/$(DEMO)/report/index.html"
	@$(BIN)/python -c "import json; m = json.load(open('$(DEMO)/evaluation/metrics.json')); \
		print('held-out mAP (COCO): AP %.3f, AP50 %.3f' % (m['AP'], m['AP50']))"

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache
