# Gemma-4 series for sglang 0.5.23.  `make engine` builds and installs the patched engine into .venv;
# `make test` builds what it needs and runs the CPU test suite.  See README.md.

PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
SERIES := $(VPY) tools/series.py
UPSTREAM_VENV ?= .venv-upstream
PYTEST_ARGS ?=

.PHONY: engine engine-upstream test check export bench-pool bench-tree bench-vision bench-routing routing-sass bench-probe bench-serving clean

$(VPY):
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade wheel

# Build the patched wheel from the verified upstream wheel + patches/, install it with sglang's real
# dependencies, then prove it: installed version, applied series, `launch_server --help`.
engine: $(VPY)
	$(SERIES) fetch
	$(SERIES) check
	@set -e; whl=$$($(SERIES) build --out dist); echo "built $$whl"; \
	$(VPY) -m pip install --quiet "$$whl" -r requirements-test.txt; \
	$(VPY) -m pip install --quiet --no-deps --force-reinstall "$$whl"
	@set -e; want=$$($(SERIES) version); \
	got=$$($(VPY) -c 'import importlib.metadata as m; print(m.version("sglang"))'); \
	echo "installed sglang $$got"; \
	if [ "$$got" != "$$want" ]; then echo "error: installed sglang $$got, expected $$want" >&2; exit 1; fi
	$(VPY) -m sglang.srt.gemma4_series
	@mkdir -p build
	@$(VPY) -m sglang.launch_server --help > build/launch_server_help.txt
	@echo "python -m sglang.launch_server --help: OK ($$(wc -l < build/launch_server_help.txt) lines)"

# Stock sglang==0.5.23 (same verified wheel, no patches) for A/B runs.
engine-upstream: $(VPY)
	$(SERIES) fetch
	test -x $(UPSTREAM_VENV)/bin/python || $(PYTHON) -m venv $(UPSTREAM_VENV)
	@set -e; whl=$$($(SERIES) build --no-patches --out build/upstream-dist); \
	$(UPSTREAM_VENV)/bin/python -m pip install --quiet "$$whl"
	$(UPSTREAM_VENV)/bin/python -c 'import importlib.metadata as m; print("installed sglang", m.version("sglang"))'

test: engine
	$(VPY) -m pytest test -q -p no:cacheprovider $(PYTEST_ARGS)

check: $(VPY)
	$(SERIES) check

export: $(VPY)
	rm -rf build/export
	$(SERIES) export --out build/export
	@ls build/export

bench-pool: engine
	$(VPY) benchmark/gemma4/pool_capacity.py --out benchmark/gemma4/results

# GPU benchmarks (run on a GPU machine after `make engine`; results land in benchmark/gemma4/results).
BENCH_TREE := build/bench-tree
bench-tree: $(VPY)
	rm -rf $(BENCH_TREE)
	$(SERIES) materialise --dest $(BENCH_TREE)
	git -C $(BENCH_TREE) show upstream:python/sglang/kernels/ops/moe/gemma4_routing.py > build/upstream_gemma4_routing.py

# Vision tower, stock vs patched, each in its own engine's process (real sglang, no stand-ins).
bench-vision: $(VPY)
	test -x $(UPSTREAM_VENV)/bin/python || $(MAKE) engine-upstream
	$(VPY) benchmark/gemma4/bench_vision.py --upstream-python $(UPSTREAM_VENV)/bin/python \
		--patched-python $(VPY) --out benchmark/gemma4/results

# The router kernels as this checkout has them, against 0.5.23's (extracted by bench-tree); bf16 and fp32.
bench-routing: bench-tree
	$(VPY) benchmark/gemma4/bench_routing.py --upstream-file build/upstream_gemma4_routing.py \
		--dtypes bfloat16,float32 --sweep --out benchmark/gemma4/results

# Offline (CPU): SASS instruction counts of the router kernels for sm_90.
routing-sass: engine
	$(VPY) benchmark/gemma4/routing_sass.py

bench-probe: $(VPY)
	$(VPY) benchmark/gemma4/bench_page_table_probe.py --out benchmark/gemma4/results

# End-to-end A/B with bench_serving: MODEL=hub-id-or-dir WORKLOADS=chat,summarization,images
MODEL ?= build/models/e2b
WORKLOADS ?= chat,images
bench-serving: $(VPY)
	test -x $(UPSTREAM_VENV)/bin/python || $(MAKE) engine-upstream
	test -d $(MODEL) || case "$(MODEL)" in build/models/*) $(VPY) benchmark/gemma4/make_model_dir.py dir $(notdir $(MODEL)) $(MODEL);; esac
	$(VPY) benchmark/gemma4/serve_ab.py --model $(MODEL) --workloads $(WORKLOADS) \
		--upstream-python $(UPSTREAM_VENV)/bin/python --patched-python $(VPY)

clean:
	rm -rf build dist
