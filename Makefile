# Netsonde: `make allinone` runs everything on this host, `make test` runs the whole suite.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PACKAGES := libs/common libs/flow libs/gremlin $(wildcard services/*)
APT_PACKAGES := nats-server iproute2 iputils-ping ethtool openvswitch-switch tcpdump tshark libpcap-dev gcc python3-dev docker-compose pmacct nftables clang llvm libbpf-dev bpftool
BENCH_APT_PACKAGES := tcpreplay pmacct softflowd iperf3 netsniff-ng
UI_APT_PACKAGES := chromium
# headless browser of the web UI tests (tests/integration/test_ui.py), installed without recommends (115 packages fewer)
UI_DIR := services/query-api/ui
UI_BUNDLE := services/query-api/src/netsonde/query_api/static/ui/manifest.json
STAMP := $(VENV)/.installed
# the eBPF flow capture's TC program (docs/ebpf.md), compiled for this kernel's BPF target
EBPF_OBJ := libs/flow/src/netsonde/flow/ebpf/flow.bpf.o
# the kernel drop reasons program (capture option DropReasons), CO-RE against this kernel's BTF (vmlinux.h)
EBPF_DROPS_OBJ := libs/flow/src/netsonde/flow/ebpf/drops.bpf.o
RATCHET_RULES := E,W,F,I,UP,B

.PHONY: help deps deps-bench install ui allinone demo demo-down demo-screenshot test test-unit test-compose compose-deps bench lint clean

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

define apt_install
	@missing=$$(for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then echo "apt-get install" $$missing; \
	  export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get install -y -q $(2) $$missing >/dev/null; fi
endef

deps: ## Install the Debian packages Netsonde uses (skipped when all are present)
	$(call apt_install,$(APT_PACKAGES))
	$(call apt_install,$(UI_APT_PACKAGES),--no-install-recommends)

deps-bench: ## Install the peers the benchmarks compare against (pmacct, softflowd, tcpreplay ...)
	$(call apt_install,$(BENCH_APT_PACKAGES))

$(STAMP): $(foreach p,$(PACKAGES),$(p)/pyproject.toml) requirements-dev.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements-dev.txt $(foreach p,$(PACKAGES),-e $(p))
	$(PY) -m netsonde.flow_enricher.ctables
	@touch $(STAMP)

install: deps $(STAMP) ui $(EBPF_OBJ) $(EBPF_DROPS_OBJ) ## Create the venv in .venv and install every package (editable), build the web UI

$(EBPF_OBJ): libs/flow/src/netsonde/flow/ebpf/flow.bpf.c
	clang -O2 -g -Wall -target bpf -I/usr/include/$$(gcc -dumpmachine) -c $< -o $@

build/ebpf/vmlinux.h:
	@mkdir -p build/ebpf
	bpftool btf dump file /sys/kernel/btf/vmlinux format c > $@.tmp && mv $@.tmp $@

$(EBPF_DROPS_OBJ): libs/flow/src/netsonde/flow/ebpf/drops.bpf.c build/ebpf/vmlinux.h
	clang -O2 -g -Wall -target bpf -D__TARGET_ARCH_$$(uname -m | sed 's/x86_64/x86/;s/aarch64/arm64/') -Ibuild/ebpf -c $< -o $@

ui: $(UI_BUNDLE) ## Build the web UI bundle (npm ci + esbuild in services/query-api/ui; nothing fetched at run time)

$(UI_BUNDLE): $(UI_DIR)/package.json $(UI_DIR)/package-lock.json $(UI_DIR)/build.mjs $(wildcard $(UI_DIR)/src/*)
	cd $(UI_DIR) && npm ci --no-audit --no-fund --loglevel=error && node build.mjs

allinone: install ## Start NATS, the ClickHouse store and every service on this host
	$(VENV)/bin/netsonde allinone

demo: install ## Two simulated hosts, a VXLAN tunnel, captures and a ping, next to a running `make allinone`
	$(PY) -m netsonde.cli.demo up

demo-down: ## Remove everything `make demo` created
	$(PY) -m netsonde.cli.demo down

demo-screenshot: ## With `make allinone` and `make demo` running: the README picture (docs/img/ui-map.png)
	$(PY) -m netsonde.cli.screenshot --output docs/img/ui-map.png

lint: $(STAMP) ## ruff on every tracked file; format check, stricter ruff and mypy --strict on lint-ratchet.txt
	@tracked=$$(git ls-files '*.py' | while read -r f; do [ -e "$$f" ] && echo "$$f"; done); \
	ratchet=$$(grep -v -e '^#' -e '^$$' lint-ratchet.txt); \
	echo "ruff check: $$(echo $$tracked | wc -w) tracked files"; $(VENV)/bin/ruff check -q $$tracked && \
	echo "ruff format --check, ruff check --select $(RATCHET_RULES), mypy --strict: $$(echo $$ratchet | wc -w) files" && \
	$(VENV)/bin/ruff format --check -q $$ratchet && \
	$(VENV)/bin/ruff check -q --select $(RATCHET_RULES) $$ratchet && \
	$(VENV)/bin/mypy $$ratchet

test-unit: $(STAMP) ## Run tests/unit (no root needed: as non-root the root-marked tests are deselected)
	@markers="not ovs"; if [ "$$(id -u)" != 0 ]; then markers="not root and not ovs"; \
	  echo "not root: deselecting the tests marked root"; fi; \
	$(PY) -m pytest -q -p no:cacheprovider tests/unit -m "$$markers" $(PYTEST_ARGS)

test: install deps-bench lint ## Run make lint, then the whole test suite (starts its own NATS and ClickHouse store)
	@$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 1; fi; exit $$rc

compose-deps: ## Rootful podman with a Docker API, the dnsname plugin and a local debian:bookworm image (deploy/)
	bash deploy/podman-setup.sh

test-compose: install compose-deps ## The compose test alone: builds the image, runs the stack on podman, scales it
	$(PY) -m pytest -q -p no:cacheprovider -m compose tests/integration/test_compose.py $(PYTEST_ARGS)

bench: install deps-bench ## Run the benchmarks and write docs/benchmarks.md
	$(PY) -m bench $(BENCH_ARGS)

clean: ## Remove the venv and runtime state
	rm -rf $(VENV) .netsonde
