# litzoo: `make demo` trains RepVGG pruned by ResRep on digits, `make test` runs the suite. Both build .venv first.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
LITZOO := $(VENV)/bin/litzoo
STAMP := $(VENV)/.litzoo-installed

.PHONY: demo test bench lint clean

# torch goes in first, alone, and is then pinned by a constraints file so that no other package
# can replace it (a plain `torch` requirement would otherwise pull a CUDA build).
$(STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -c "import torch; print(f'torch=={torch.__version__.split(\"+\")[0]}')" > $(VENV)/constraints.txt
	$(PY) -m pip install --quiet -c $(VENV)/constraints.txt -e ".[dev,export,distributed,kg,stats,video,text]"
	touch $(STAMP)

# RepVGG trained with its branches while ResRep prunes it to half the FLOPs; at the end of fit the
# blocks are fused with the compactors folded in and the channels cut out; the pruned plain model is
# tested and exported to ONNX (checked against torch on real test images).
demo: $(STAMP)
	$(LITZOO) fit -c configs/resrep/repvgg_digits.yaml
	$(LITZOO) test -c configs/resrep/repvgg_digits.yaml --ckpt_path last
	$(LITZOO) export --format onnx --ckpt_path $$(ls -td runs/repvgg-resrep/digits/version_*/checkpoints/pruned.ckpt | head -1)

test: $(STAMP)
	$(PY) -m pytest -n 2 --durations=15

bench: $(STAMP)
	$(PY) benchmarks/run.py

lint: $(STAMP)
	$(PY) -m pip install --quiet -c $(VENV)/constraints.txt ruff
	$(VENV)/bin/ruff check litzoo framework modules callbacks datamodules configs tests benchmarks setup.py

clean:
	rm -rf $(VENV) runs lightning_logs
