# PyCache image: the `pycache` command and nothing else (no dev or test deps).
# docker-compose.yml runs the local topology of `pycache up` from it (three
# nodes, a balancer and the HTTP edge); deploy/kubernetes/ runs it on
# Kubernetes.  Build: docker build -t pycache-mesh .
#
# Pin the base image by digest for reproducible builds: look the digest up
#   docker buildx imagetools inspect python:3.11-slim   (the "Digest:" line)
# or docker pull python:3.11-slim && docker inspect --format '{{index .RepoDigests 0}}' python:3.11-slim
# then build with it:
#   docker build --build-arg PYTHON_IMAGE=python:3.11-slim@sha256:<digest> -t pycache-mesh .
# (or write it into the ARG below).  Renovate and Dependabot update such pins.
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The dependencies in a layer of their own, before the code: it is rebuilt
# only when setup.py (or pyproject.toml, README.md) changes, not at every
# edit of mesh/.  A stub package stands in for the code, so that `pip install .`
# resolves and installs install_requires here.
WORKDIR /src
COPY setup.py pyproject.toml README.md ./
RUN mkdir mesh \
    && touch mesh/__init__.py \
    && python -m pip install . \
    && rm -rf mesh build *.egg-info

# Then the code, installed over the stub without touching the dependencies;
# the package is installed, not run from the source tree, which is removed.
COPY mesh ./mesh
RUN python -m pip install --no-deps . \
    && rm -rf /src

# An unprivileged user owns /data and /keys, so a named volume mounted there
# starts out writable by it (Docker copies the mount point's owner into a new
# volume); docker-compose.yml's keygen service writes the credentials to /keys.
# Kubernetes runs it as this uid too (deploy/kubernetes: runAsUser 10001).
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/pycache pycache \
    && mkdir /data /keys \
    && chown pycache:pycache /data /keys
USER pycache
WORKDIR /home/pycache
VOLUME ["/data"]

# 5000 HTTP edge; 7000 balancer front; 7001 node client API; 7101 node
# replication; 7201 node PUB; 8001-8003 the nodes' HTTP API (one per node).
EXPOSE 5000 7000 7001 7101 7201 8001 8002 8003

# Liveness of the HTTP API of whatever runs here: the edge on 5000 by default;
# set HEALTHCHECK_URL for a node (http://127.0.0.1:<--http-port>/api/live/).
# /api/live/ needs no token.  docker-compose.yml gives each service a
# readiness check of its own instead (the balancer has no HTTP port), and
# Kubernetes ignores HEALTHCHECK (deploy/kubernetes has probes).
ENV HEALTHCHECK_URL=http://127.0.0.1:5000/api/live/
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['HEALTHCHECK_URL'], timeout=2)"]

# docker-compose.yml and deploy/kubernetes give each container its command
# (pycache node|balancer|edge).
CMD ["pycache", "--help"]
