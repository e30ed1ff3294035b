# Two commands set everything up on a fresh machine: `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install run test test-setup lint docker images service-image bench clean sdk-venvs chromium fuse

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

# The SageMaker Python SDKs, each in a venv of its own (they pin different boto3/pydantic ranges), for the
# SDK tests. The pins are the releases the tests were written on. Like the images, each is built once per machine
# and pin (under SDK_CACHE; ~2 minutes for both), and .venv-sdk2 and .venv-sdk3 are links to them, so a fresh
# clone builds nothing. Delete the folder under SDK_CACHE to rebuild one.
SDK2_PIN ?= sagemaker==2.257.7
SDK3_PIN ?= sagemaker==3.27.0
SDK_CACHE ?= $(HOME)/.cache/smlocal
SDK2_VENV := $(SDK_CACHE)/venv-$(subst ==,-,$(SDK2_PIN))
SDK3_VENV := $(SDK_CACHE)/venv-$(subst ==,-,$(SDK3_PIN))

# One build at a time per venv (two checkouts may ask at once); `.installed` only once pip succeeded.
$(SDK_CACHE)/venv-%/.installed:
	mkdir -p $(SDK_CACHE)
	flock $(SDK_CACHE)/.lock-$* sh -c 'test -f $@ || { rm -rf $(@D) && python3 -m venv $(@D) \
		&& $(@D)/bin/python -m pip install --quiet --upgrade pip \
		&& $(@D)/bin/python -m pip install --quiet "$(subst -,==,$*)" && touch $@; }'

.venv-sdk2/.installed: $(SDK2_VENV)/.installed
	rm -rf .venv-sdk2 && ln -s $(SDK2_VENV) .venv-sdk2

.venv-sdk3/.installed: $(SDK3_VENV)/.installed
	rm -rf .venv-sdk3 && ln -s $(SDK3_VENV) .venv-sdk3

sdk-venvs: .venv-sdk2/.installed .venv-sdk3/.installed

# The Docker engine (installed and started when missing; needs root) and the test images, cached by tag.
docker:
	bash scripts/ensure-docker.sh

# The toolkit image's wheels are built with the project venv's pip when there is one (Python 3.11,
# like the images'); set PYTHON to choose another interpreter.
images: docker
	PYTHON="$${PYTHON:-$(if $(wildcard $(PY)),$(PY),python3)}" bash scripts/build-images.sh

service-image: images install
	PYTHON=$(PY) bash scripts/build-service-image.sh

# The service on 127.0.0.1:8080; with no SMLOCAL_S3_ENDPOINT it starts its own S3 store on :9000, which keeps
# objects as plain files in .smlocal/s3/<bucket>/<key> (SMLOCAL_S3_STORE=memory: an in-memory one).
run: install
	@bash scripts/ensure-docker.sh || echo "warning: no Docker engine: the API works, jobs will fail"
	@bash scripts/ensure-fuse.sh || echo "warning: no fuse3: FastFile channels are downloaded as in File mode"
	$(VENV)/bin/smlocal serve --host 127.0.0.1 --port 8080

# Debian's chromium and chromium-driver, for the web console's browser tests (installed when missing; needs root).
chromium:
	bash scripts/ensure-chromium.sh

# Debian's fuse3 (fusermount3, for FastFile's rclone mounts; installed when missing; needs root).
fuse:
	bash scripts/ensure-fuse.sh

# The tests run in TEST_WORKERS pytest-xdist processes, each given whole modules, slowest first, and the modules that
# share engine-wide state together (tests/support/distribution.py); TEST_WORKERS=0 runs them all in this process.
# Measurements: docs/architecture.md, "smlocal's own suite". The project's modules are byte-compiled first: with
# PYTHONDONTWRITEBYTECODE set (as on this machine) each of the ~190 servers the suite starts would compile them again.
TEST_WORKERS ?= 4

test:
	@start=$$(date +%s); \
	$(MAKE) --no-print-directory test-setup && \
	$(PY) -m compileall -q server runner smlocal > /dev/null && \
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS); \
	status=$$?; \
	echo "make test: $$(( $$(date +%s) - start )) s wall time in all (set-up and pytest), exit $$status"; \
	exit $$status

test-setup: install images sdk-venvs chromium fuse

lint: install
	$(VENV)/bin/ruff check server runner smlocal tests bench examples examples/sklearn/train

# Also Debian's s3fs: the FUSE choice (bench/fuse_choice.py) measures it against rclone.
bench: install images
	bash scripts/ensure-fuse.sh --with-s3fs
	$(PY) -m bench.run

# Not .smlocal: it holds the jobs and the S3 store's data (`rm -rf .smlocal` forgets them all).
clean:
	rm -rf $(VENV) .venv-sdk2 .venv-sdk3 .pytest_cache test-artifacts
