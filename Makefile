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

VENV_PY := $(VENV)/bin/python
STAMP   := $(VENV)/.clearclip_d2-installed

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

.PHONY: help install test demo clean clean-venv

help:
	@sed -n '1,13p' Makefile | sed 's/^# \{0,1\}//'

$(STAMP): requirements.txt setup.py tools/install_env.sh
	PYTHON="$(PYTHON)" VENV="$(VENV)" D2="$(D2)" bash tools/install_env.sh
	@touch "$(STAMP)"

install: $(STAMP)

test: $(STAMP)
	$(VENV_PY) -m pytest tests -q $(PYTEST_ARGS)

demo: $(STAMP)
	$(VENV_PY) tools/demo.py $(DEMO_FLAGS) $(DEMO_ARGS) --opts $(DEMO_OPTS)

clean:
	rm -rf $(DEMO_OUTPUT) .pytest_cache build dist *.egg-info

clean-venv:
	rm -rf $(VENV)
