# litzoo: `make demo` trains RepVGG on digits, `make test` runs the suite. Both build .venv first.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
LITZOO := $(VENV)/bin/litzoo
STAMP := $(VENV)/.litzoo-installed

.PHONY: demo test bench lint clean

# torch goes in first, alone, and is then pinned by a constraints file so that no other package
# can replace it (a plain `torch` requirement would otherwise pull a CUDA build).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -c "import torch; print(f'torch=={torch.__version__.split(\"+\")[0]}')" > $(VENV)/constraints.txt
	$(PY) -m pip install --quiet -c $(VENV)/constraints.txt -e ".[dev,export]"
	touch $(STAMP)

demo: $(STAMP)
	$(LITZOO) fit -c configs/repvgg/digits.yaml
	$(LITZOO) test -c configs/repvgg/digits.yaml --ckpt_path best

test: $(STAMP)
	$(PY) -m pytest -n 2 --durations=15

bench: $(STAMP)
	$(PY) benchmarks/run.py

lint: $(STAMP)
	$(PY) -m pip install --quiet -c $(VENV)/constraints.txt ruff
	$(VENV)/bin/ruff check framework modules callbacks datamodules tests benchmarks

clean:
	rm -rf $(VENV) runs lightning_logs
