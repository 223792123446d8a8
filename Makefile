# Two set-up commands (see README): `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WEB_STAMP := web/node_modules/.installed

.PHONY: run test install browser lint bench clean-outputs

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	# Test-only: OpenAI's CLIP BPE file, against which a test re-derives the shipped tokenizer files (its
	# torchvision dependency is not wanted, and nothing at run time reads the wheel).
	$(PY) -m pip install -q --no-deps clip-anytorch==2.6.0
	touch $(STAMP)

# The editor's canvas library, pinned by web/package-lock.json, served from web/node_modules.
$(WEB_STAMP): web/package.json web/package-lock.json
	cd web && npm ci --no-audit --no-fund --silent
	touch $(WEB_STAMP)

# Browser tests drive Debian's Chromium (Playwright's own browser download does not work offline).
browser:
	@command -v chromium >/dev/null || (command -v apt-get >/dev/null && (apt-get install -y -q chromium >/dev/null || sudo apt-get install -y -q chromium >/dev/null)) || \
		(echo "browser tests need Chromium: install Debian's package with 'apt-get install chromium'" >&2; exit 1)

install: $(STAMP) $(WEB_STAMP)

# Installs, builds the embedded tiny model if missing, starts the server with the editor and prints its URL.
run: $(STAMP) $(WEB_STAMP)
	$(PY) main.py serve

# Installs, then runs every test. The parity suite builds its reference checkpoints once into ~/.cache/sumi
# (SD1.5 2.1 GB, SD2 2.6 GB, SDXL 6.9 GB: about 12 GB of disk, 14 GB of memory for the SDXL cases);
# SUMI_PARITY_SDXL=0 leaves the SDXL cases out unless cached, SUMI_SKIP_SLOW=1 skips all of it, each saying so.
SUMI_PARITY_SDXL ?= 1
test: $(STAMP) $(WEB_STAMP) browser
	OMP_NUM_THREADS=1 SUMI_PARITY_SDXL=$(SUMI_PARITY_SDXL) $(PY) -m pytest
	$(PY) -m ruff check .

lint: $(STAMP)
	$(PY) -m ruff check .

bench: $(STAMP)
	$(PY) benchmarks/txt2img.py

clean-outputs:
	rm -rf output temp
