# durable-mx — the two commands: `make lab` (bring up the lab and converge site.yml) and
# `make test` (lint, unit tests, Molecule scenarios). Run as root on Debian 12.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

VENV := $(CURDIR)/.venv
export PATH := $(VENV)/bin:$(PATH)
# Podman on this host needs runc and explicit ulimits; the lab, Molecule and tests share this file.
export CONTAINERS_CONF := $(CURDIR)/files/lab/containers.conf
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export ANSIBLE_FORCE_COLOR ?= 0

# Host programs and their Debian packages: one table, tests/tools/host-programs.txt. make deps
# installs its `apt` packages; the preflight checks every program in it before lab, test and bench.
HOST_PACKAGES := $(shell bash $(CURDIR)/tests/tools/preflight.sh --packages)
ifeq ($(strip $(HOST_PACKAGES)),)
$(error no host packages from tests/tools/host-programs.txt (tests/tools/preflight.sh --packages failed))
endif
LAB_INVENTORY := inventories/lab/hosts.yml
# Scenarios of `make test`; molecule/bench is the benchmark bed of `make bench`.
SCENARIOS ?= default durable monitoring tenants cluster

.PHONY: help deps host-packages preflight lab lab-up lab-down lab-summary test lint unit rules molecule clean-stale bench runbooks chaos

help:
	@echo "make lab        bring up the lab nodes and run site.yml against them"
	@echo "make lab-down   remove the lab's containers, network, loop devices and disk files"
	@echo "make preflight  check that every program lab, test and bench run on this host is there (they do it first)"
	@echo "make test       yamllint, ansible-lint, unit tests, promtool rule tests, Molecule scenarios ($(SCENARIOS))"
	@echo "make bench      benchmarks (printed figures and ratios, results/ as JSON)"
	@echo "make runbooks   run every runbook (playbooks/runbooks/) against the running lab and check its effect"
	@echo "make chaos      run the chaos exercises (playbooks/chaos/) on the running lab; report in results/chaos/"

deps: host-packages $(VENV)/.installed

host-packages:
	@missing=$$(for p in $(HOST_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing host packages:" $$missing; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

# Run by lab, test, bench, runbooks, chaos and lab-down right after deps: is every host program they run there?
preflight:
	@VENV=$(VENV) bash tests/tools/preflight.sh

$(VENV)/.installed: requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.txt
	touch $@

lab: deps preflight lab-up
	ansible-playbook -i $(LAB_INVENTORY) site.yml
	@$(MAKE) --no-print-directory lab-summary

lab-up:
	ansible-playbook -i $(LAB_INVENTORY) playbooks/lab/up.yml

lab-summary:
	@ansible-playbook -i $(LAB_INVENTORY) playbooks/lab/summary.yml | sed -n '/==== LAB SUMMARY/,/==== END SUMMARY/p' | sed -E 's/^ {8}//'

# The runbooks against the lab `make lab` brought up (tests/lab/test_runbooks.py); it leaves the lab running.
runbooks: deps preflight
	DMX_LAB_TESTS=1 pytest -q -s tests/lab/test_runbooks.py

# The chaos exercises on the running lab, in this order (docs/chaos.md); each writes
# results/chaos/<exercise>.json, then report.md and report.json sum them up. Fails if any exercise
# failed, lost or duplicated mail.
CHAOS ?= disk-failure-steady disk-failure-light kill-node power-cut volume-full dns-servfail dns-corrupt milter-down partition
LAB_NODES := mx1 mx2 backup-mx ns1 sink sender mon1

chaos: deps preflight
	@for n in $(LAB_NODES); do \
	  [ "$$(podman inspect -f '{{.State.Running}}' dmx-lab-$$n 2>/dev/null)" = true ] \
	    || { echo "the lab is not up (dmx-lab-$$n is not running): run make lab first" >&2; exit 1; }; \
	done
	@mkdir -p results/chaos
	@since=$$(date -u +%Y-%m-%dT%H:%M:%SZ); rc=0; \
	for e in $(CHAOS); do \
	  echo "=== chaos $$e"; ansible-playbook -i $(LAB_INVENTORY) playbooks/chaos/$$e.yml -e confirm=yes || rc=1; \
	done; \
	python tests/tools/chaos.py --state-dir results/chaos report --exercises "$$(echo $(CHAOS) | tr ' ' ,)" --since $$since || rc=1; \
	exit $$rc

lab-down: deps preflight
	ansible-playbook -i $(LAB_INVENTORY) playbooks/lab/down.yml

test: deps preflight lint rules unit molecule

lint:
	yamllint --strict .
	ansible-lint

unit:
	pytest -q tests/unit

# Alerting and SLO rules: promtool check + unit tests with input series (promtool from Debian's package).
rules:
	bash tests/promtool/run.sh

molecule: clean-stale
	@for s in $(SCENARIOS); do echo "=== molecule scenario $$s"; molecule test -s $$s || exit 1; done

# Leftovers of an interrupted Molecule run (containers, networks, loop devices), and only those.
clean-stale:
	@bash tests/clean-stale.sh

# Benchmarks: printed ratios against baselines measured in the same run, never asserted.
# One bench bed (molecule/bench) serves every script in BENCH; results/ keeps the JSON.
# The scripts in BENCH_OWN_BED bring up (and remove) a Molecule scenario of their own.
BENCH ?= acceptance queue_read exporter boot
BENCH_OWN_BED ?= tenants

bench: deps preflight clean-stale
	@mkdir -p results
	molecule create -s bench && molecule prepare -s bench && molecule converge -s bench \
	  && for b in $(BENCH); do echo "=== bench/$$b.py"; python bench/$$b.py --json results/bench-$$b.json || exit 1; done; \
	rc=$$?; molecule destroy -s bench >/dev/null; [ $$rc -eq 0 ] || exit $$rc; \
	for b in $(BENCH_OWN_BED); do echo "=== bench/$$b.py"; python bench/$$b.py --json results/bench-$$b.json || exit 1; done
