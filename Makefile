# Two commands set everything up on a fresh machine: `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install run test lint docker images service-image bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

# The Docker engine (installed and started when missing; needs root) and the test images, cached by tag.
docker:
	bash scripts/ensure-docker.sh

images: docker
	bash scripts/build-images.sh

service-image: images install
	PYTHON=$(PY) bash scripts/build-service-image.sh

# The service on 127.0.0.1:8080; with no SMLOCAL_S3_ENDPOINT it starts its own S3 store on :9000, which keeps
# objects as plain files in .smlocal/s3/<bucket>/<key> (SMLOCAL_S3_STORE=memory: an in-memory one).
run: install
	@bash scripts/ensure-docker.sh || echo "warning: no Docker engine: the API works, jobs will fail"
	$(VENV)/bin/smlocal serve --host 127.0.0.1 --port 8080

test: install images
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check server runner smlocal tests bench examples examples/sklearn/train

bench: install images
	$(PY) -m bench.run

# Not .smlocal: it holds the jobs and the S3 store's data (`rm -rf .smlocal` forgets them all).
clean:
	rm -rf $(VENV) .pytest_cache
