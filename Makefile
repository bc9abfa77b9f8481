# clearclip_d2: set-up, tests and the demo.
#
#   make test                       create .venv if missing, install everything, run pytest
#   make test PYTEST_ARGS="-k demo -x"
#   make demo                       segment scikit-image's sample photos -> output/demo/*_overlay.png
#   make demo WEIGHTS=/path/to/open_clip_pytorch_model.bin      (local OpenAI ViT-B/16 weights)
#   make demo OPTS="MODEL.CLEARCLIP.MODEL_NAME ViT-L-14 MODEL.CLEARCLIP.PRETRAINED /path/to/weights.bin"
#   make demo INPUT="photos/ 'more/*.jpg'" VOCABULARY="cat, kitten; grass, lawn; sky"
#   make install D2=official        install Detectron2 from GitHub (internet + compiler) instead of
#                                   the sal-detectron2 wheel; skipped if detectron2 already imports
#   make test-numpy1                the suite with numpy 1.26.4 instead of requirements.txt's numpy 2
#                                   (on .venv's Python, <= 3.12; numpy 1.26 has no 3.13 wheels)
#   make test-d2-v06                the suite with Detectron2 v0.6 in its own venv (.venv-d2-v06)
#   make test PYTHON=python3.13 VENV=.venv-py313   the suite on another Python, in its own venv
#   make check-requirements         requirements.txt resolves to wheels without backtracking on each
#                                   python3.9 ... python3.13 on PATH (package index, ~1 min each)
#
# The install runs once (stamp file .venv/.clearclip_d2-installed); it runs again when
# requirements.txt, setup.py or tools/install_env.sh change, or after `make clean-venv`.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON      ?= python3
VENV        ?= .venv
D2          ?= sal
PYTEST_ARGS ?=
CONFIG      ?= configs/clearclip_coco.yaml
DEMO_OUTPUT ?= output/demo
# WEIGHTS: a local open_clip checkpoint for the config's architecture (MODEL.CLEARCLIP.PRETRAINED).
# QUICK_GELU applies with WEIGHTS: True for OpenAI (and MetaCLIP) weights, False for LAION/DataComp ones.
WEIGHTS     ?=
QUICK_GELU  ?= True
OPTS        ?=
INPUT       ?=
VOCABULARY  ?=
DEMO_ARGS   ?=
NUMPY1      ?= numpy==1.26.4
CHECK_PYTHONS ?= 3.9 3.10 3.11 3.12 3.13

VENV_PY := $(VENV)/bin/python
STAMP   := $(VENV)/.clearclip_d2-installed
NUMPY1_DIR := $(VENV)/numpy1

ifeq ($(CI),true)
export PIP_PROGRESS_BAR := off
endif

DEMO_FLAGS := --config-file $(CONFIG) --output $(DEMO_OUTPUT)
ifneq ($(strip $(INPUT)),)
DEMO_FLAGS += --input $(INPUT)
endif
ifneq ($(strip $(VOCABULARY)),)
DEMO_FLAGS += --vocabulary "$(VOCABULARY)"
endif
DEMO_OPTS := $(if $(strip $(WEIGHTS)),MODEL.CLEARCLIP.PRETRAINED '$(WEIGHTS)' MODEL.CLEARCLIP.FORCE_QUICK_GELU $(QUICK_GELU)) $(OPTS)

.PHONY: help install test test-numpy1 test-d2-v06 check-requirements demo clean clean-venv

help:
	@sed -n '1,19p' Makefile | sed 's/^# \{0,1\}//'

$(STAMP): requirements.txt setup.py tools/install_env.sh tools/install_detectron2_v06.sh
	PYTHON="$(PYTHON)" VENV="$(VENV)" D2="$(D2)" bash tools/install_env.sh
	@touch "$(STAMP)"

install: $(STAMP)

test: $(STAMP)
	$(VENV_PY) -m pytest tests -q $(PYTEST_ARGS)

# numpy 1.x first on sys.path (a --target folder), everything else from $(VENV).
$(NUMPY1_DIR)/.installed: $(STAMP)
	$(VENV_PY) -m pip install --no-deps --upgrade --only-binary=:all: --target "$(NUMPY1_DIR)" "$(NUMPY1)"
	@touch "$@"

test-numpy1: $(NUMPY1_DIR)/.installed
	PYTHONPATH="$(abspath $(NUMPY1_DIR))$${PYTHONPATH:+:$$PYTHONPATH}" $(VENV_PY) -m pytest tests -q $(PYTEST_ARGS)

test-d2-v06:
	$(MAKE) test VENV=.venv-d2-v06 D2=v06

check-requirements: $(STAMP)
	CLEARCLIP_D2_CHECK_PYTHONS="$(CHECK_PYTHONS)" $(VENV_PY) -m pytest tests/test_installs.py -q $(PYTEST_ARGS)

demo: $(STAMP)
	$(VENV_PY) tools/demo.py $(DEMO_FLAGS) $(DEMO_ARGS) --opts $(DEMO_OPTS)

clean:
	rm -rf $(DEMO_OUTPUT) .pytest_cache build dist *.egg-info

clean-venv:
	rm -rf $(VENV)
