# The README's two commands: `make demo` and `make test`. Both install everything first (scripts/install.sh).
VENV ?= .venv
PYTEST_ARGS ?=
DEMO_ARGS ?=
IMAGE_ARGS ?=

.PHONY: install demo test images

install:
	bash scripts/install.sh

demo: install
	$(VENV)/bin/visionnode pipeline run --local $(DEMO_ARGS)

# The container images (docker/build.sh): installs Debian's docker.io and debootstrap and starts dockerd
# (root) when needed, then builds base, the seven phase images and triton-openvino with no registry.
images: install
	bash scripts/dockerd.sh install
	bash scripts/dockerd.sh start
	bash docker/build.sh $(IMAGE_ARGS)

test: install
	VENV=$(VENV) bash scripts/run_tests.sh $(PYTEST_ARGS)
