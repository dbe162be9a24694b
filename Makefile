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

# synth -> detect on embedded defaults: a local Ray started in-process, local folders, CPU.
demo: $(STAMP)
	$(BIN)/detbatch synth $(DEMO)/data/holdout --images 64 --seed 1
	$(BIN)/detbatch detect --config configs/local.yaml --overwrite
	@echo
	@echo "Detections are in $(DEMO)/detections/ (Parquet). Try:"
	@echo "  $(BIN)/python -c \"import pandas as pd; df = pd.read_parquet('$(DEMO)/detections', filters=[('score', '>', 0.05)]); print(df.groupby('category').size().sort_values().tail())\""

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache
