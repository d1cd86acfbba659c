# Two commands set up everything on a fresh machine:
#   make demo   create .venv, install the pinned dependencies, run the main job on bundled data
#   make test   same setup, then the test suite (what CI runs)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
EV     := $(VENV)/bin/edgevit
STAMP  := $(VENV)/.installed
DEMO   ?= out/demo
# models of the demo's latency/Pareto report (the full list: `edgevit bench --help`)
DEMO_BENCH ?= edgevit_xxs edgevit_xs edgevit_s mobilenetv2_100 mobilenetv3_large_075 efficientnet_b0 \
              mobilevit_xxs mobilevit_xs pvt_v2_b0 deit_tiny_patch16_224 fastvit_t8

.PHONY: setup demo test timm-tests clean arm-lane

setup: $(STAMP)

$(STAMP): requirements.txt requirements-litert.txt requirements-edge.txt requirements-apps.txt pyproject.toml \
          web/package-lock.json
	@# libusb-1.0 for the TFLite Support metadata writer (requirements-apps.txt): Debian's package, as root
	test -e /usr/lib/x86_64-linux-gnu/libusb-1.0.so.0 -o -e /usr/lib/aarch64-linux-gnu/libusb-1.0.so.0 || \
		{ [ "$$(id -u)" = 0 ] && { apt-get install -y -q libusb-1.0-0 || \
		  { apt-get update -q && apt-get install -y -q libusb-1.0-0; }; } > /dev/null; } || \
		{ echo "the TFLite metadata writer needs libusb-1.0: apt-get install libusb-1.0-0 (as root)"; exit 1; }
	@# Chromium for the in-browser test of the .onnx files (ONNX Runtime Web, web/): Debian's package, as root
	test -x /usr/bin/chromium || \
		{ [ "$$(id -u)" = 0 ] && { apt-get install -y -q chromium || \
		  { apt-get update -q && apt-get install -y -q chromium; }; } > /dev/null; } || \
		{ echo "the browser test needs Debian's chromium: apt-get install chromium (as root)"; exit 1; }
	command -v npm > /dev/null || { echo "the browser test needs Node.js and npm (Debian: apt-get install nodejs npm)"; exit 1; }
	npm ci --prefix web --no-audit --no-fund --loglevel=error
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet -r requirements-litert.txt
	$(PY) -m pip install --quiet --no-deps litert-torch==0.10.0 litert-converter==0.5.0
	$(PY) -m pip install --quiet --no-deps -r requirements-edge.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-apps.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# The aarch64 lane (edgevit.deploy.aarch64, `edgevit check --arch aarch64`): qemu's user-mode emulator and Debian's
# arm64 Python, downloaded by apt with a private state folder and unpacked into $(ARM), and the runtimes' aarch64
# wheels; nothing on the host changes (scripts/build_aarch64_lane.sh)
ARM       := .aarch64
ARM_STAMP := $(ARM)/.built
arm-lane: $(ARM_STAMP)

$(ARM_STAMP): requirements-aarch64.txt scripts/build_aarch64_lane.sh | $(STAMP)
	scripts/build_aarch64_lane.sh $(ARM) $(PY)
	touch $(ARM_STAMP)

demo: setup
	$(EV) info
	rm -rf $(DEMO)
	@echo "== EdgeViT-XXS on scikit-learn's handwritten digits (real scans, bundled; CPU, a few minutes)"
	$(EV) data digits --out $(DEMO)/digits
	$(EV) train --config configs/digits_demo.yaml --data $(DEMO)/digits --output $(DEMO)/digits_run
	$(EV) eval --data $(DEMO)/digits/val --checkpoint $(DEMO)/digits_run/best.pth
	$(EV) predict $(DEMO)/digits/val/7/$$(ls $(DEMO)/digits/val/7 | head -n 1) --checkpoint $(DEMO)/digits_run/best.pth --topk 3
	@echo "== Latency on this machine (ONNX Runtime, batch 1, fp32, 2 threads) and the accuracy-latency Pareto report"
	$(EV) bench --models $(DEMO_BENCH) --runtime onnxruntime --edgevit-form fused --runs 20 --warmup 5 \
		--json $(DEMO)/bench.json --csv $(DEMO)/bench.csv
	$(EV) report --bench $(DEMO)/bench.json --vs-paper --out $(DEMO)/report
	@echo "== The paper's own Fig. 1 / Fig. 5 and Pareto claims, redrawn from its tables"
	$(EV) report --paper --out $(DEMO)/paper
	@echo "== Every runtime installed x fp32/int8: the digits EdgeViT-XXS beside MobileNetV2, each file checked in its runtime"
	$(EV) bench --runtime all --precision fp32 int8 --checkpoint $(DEMO)/digits_run/best.pth --data $(DEMO)/digits/val \
		--calib $(DEMO)/digits/train --calib-images 64 --runs 15 --warmup 3 \
		--json $(DEMO)/matrix.json --csv $(DEMO)/matrix.csv --plot $(DEMO)/matrix.png
	@echo "== Done: $(DEMO)/report/report.md (this machine vs the paper's phone), $(DEMO)/paper/report.md, $(DEMO)/matrix.png"

# ruff first (lint and import order, pyproject.toml; zero findings), then two test processes (pytest-xdist,
# whole files per process): most tests are single-threaded (exporters, converters, tiny models), so the suite
# takes about half the wall time on 2 cores; --durations: the slowest tests of each run in its log
# The test files that run OpenVINO go second, in processes of their own: a process that has run OpenVINO's CPU
# plugin and then trains with forked loader workers segfaults when SIGTERM arrives (tests/train/test_faults.py, found
# by the suite; the commands themselves are separate processes). The first run refuses any test that imports
# openvino (EDGEVIT_NO_OPENVINO, tests/conftest.py), so a new OpenVINO test cannot land among the others unnoticed.
# (the longest file first, the aarch64 lane's: the two processes take files in this order, so it does not start
# last and leave one of them idle for minutes)
OPENVINO_TESTS := tests/deploy/test_aarch64.py tests/bench/test_matrix.py tests/bench/test_profile_scripts.py \
                  tests/bench/test_runners.py tests/deploy/test_edge_reference.py tests/deploy/test_edge_runtimes.py \
                  tests/deploy/test_export.py tests/deploy/test_quantize.py tests/deploy/test_shipped_files.py \
                  tests/deploy/test_app_files.py
# (the aarch64 lane's tests may skip elsewhere, never here; the two runs share one fresh folder of exported files and
# trained checkpoints, EDGEVIT_TEST_CACHE in tests/conftest.py, removed when they end)
test: export EDGEVIT_REQUIRE_AARCH64_LANE = 1
test: setup arm-lane
	$(VENV)/bin/ruff check .
	cache=$$(mktemp -d) && trap 'rm -rf "$$cache"' EXIT && export EDGEVIT_TEST_CACHE=$$cache && \
	EDGEVIT_NO_OPENVINO=1 $(PY) -m pytest -q -n 2 --dist loadfile --durations=15 tests $(addprefix --ignore=,$(OPENVINO_TESTS)) && \
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=15 $(OPENVINO_TESTS)

# timm's own generic model tests (tests/test_models.py from the sdist of the installed timm) on edgevit_*
TIMM_TESTS := out/timm-tests
timm-tests: setup
	rm -rf $(TIMM_TESTS) && mkdir -p $(TIMM_TESTS)
	$(PY) -m pip download --quiet --no-deps --no-binary :all: -d $(TIMM_TESTS) \
		timm==$$($(PY) -c "import timm; print(timm.__version__)")
	tar -xzf $(TIMM_TESTS)/timm-*.tar.gz -C $(TIMM_TESTS) --strip-components=2 --wildcards '*/tests/test_models.py'
	sed -i "s/^FEAT_INTER_FILTERS = \[/FEAT_INTER_FILTERS = ['edgevit', /" $(TIMM_TESTS)/test_models.py
	echo "import edgevit  # registers edgevit_* with timm" > $(TIMM_TESTS)/conftest.py
	cd $(TIMM_TESTS) && $(CURDIR)/$(PY) -m pytest -q -p no:cacheprovider test_models.py -k edgevit

clean:
	rm -rf $(VENV) out .pytest_cache web/node_modules
