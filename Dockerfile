# Image for the smlocal service itself.
#
# Builds without network access: the context must contain .wheelhouse/ with a
# wheel for smlocal and every dependency, made on the host by
#   pip wheel --wheel-dir .wheelhouse .
# (scripts/build-service-image.sh does both steps). No registry is reachable
# here, so the base is normally the local debootstrap image:
#   --build-arg BASE_IMAGE=smlocal/python-base:1
# The wheels must match the base image's Python (3.11) and platform.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PIP_NO_INDEX=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1

COPY .wheelhouse/ /wheels/
# venv: keeps smlocal's pinned deps apart from the base image's Debian python3-* packages.
RUN python3 -m venv /opt/smlocal \
    && /opt/smlocal/bin/pip install --no-index --find-links /wheels smlocal \
    && rm -rf /wheels \
    && /opt/smlocal/bin/smlocal --help >/dev/null

ENV PATH=/opt/smlocal/bin:${PATH}

EXPOSE 8080
ENTRYPOINT ["smlocal"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
