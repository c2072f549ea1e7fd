# PyCache image: the `pycache` command and nothing else (no dev or test deps).
# docker-compose.yml runs the local topology of `pycache up` from it: three
# nodes, a balancer and the HTTP edge.  Build: docker build -t pycache .
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only what `pip install .` needs (see .dockerignore); the package is
# installed, not run from the source tree, which is removed afterwards.
WORKDIR /src
COPY setup.py pyproject.toml README.md ./
COPY mesh ./mesh
RUN python -m pip install . \
    && rm -rf /src

# An unprivileged user owns /data and /keys, so a named volume mounted there
# starts out writable by it (Docker copies the mount point's owner into a new
# volume); docker-compose.yml's keygen service writes the credentials to /keys.
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/pycache pycache \
    && mkdir /data /keys \
    && chown pycache:pycache /data /keys
USER pycache
WORKDIR /home/pycache
VOLUME ["/data"]

# 5000 HTTP edge; 7000 balancer front; 7001 node client API; 7101 node
# replication; 7201 node PUB; 8001-8003 the nodes' HTTP API (one per node).
EXPOSE 5000 7000 7001 7101 7201 8001 8002 8003

# docker-compose.yml gives each service its command (pycache node|balancer|edge).
CMD ["pycache", "--help"]
