# syntax=docker/dockerfile:1
# The parties' tools: `cctrain` for data owners, model owners, recipients and auditors.
# No torch: the SDK and CLI need only cryptography, gRPC, numpy and click.
#
#   docker build -f enclave/deploy/container/party.Dockerfile -t cctrain-party:0.1.0 .
#
# Build from the repository root. Extras: --build-arg EXTRAS="[parquet,recipient]".
# For a reproducible build, replace the tag below by its digest (`python@sha256:...`).

FROM python:3.11.14-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
ARG EXTRAS=""
RUN python -m venv /opt/cctrain
COPY pyproject.toml README.md /src/
COPY cctrain /src/cctrain
COPY enclave/cctrain_enclave /src/enclave/cctrain_enclave
# The enclave's source is installed too (never run here): `cctrain measure` hashes it, so a
# party computes the simulated measurement of exactly the code it will pin.
RUN /opt/cctrain/bin/pip install "/src${EXTRAS}" \
    && ! /opt/cctrain/bin/python -c "import torch" 2>/dev/null

FROM python:3.11.14-slim-bookworm
LABEL org.opencontainers.image.title="cctrain-party" \
      org.opencontainers.image.description="cctrain party tools (keys, policy, upload, release)" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/cctrain /opt/cctrain
RUN useradd --system --uid 10002 --user-group --create-home --home-dir /home/party party \
    && mkdir -p /home/party/.cctrain \
    && chown party:party /home/party/.cctrain \
    && chmod 0700 /home/party/.cctrain
ENV PATH=/opt/cctrain/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    CCTRAIN_HOME=/home/party/.cctrain
# What a party keeps: its journal heads, approvals and ε ledger (back it up with the key).
VOLUME ["/home/party/.cctrain"]
USER 10002:10002
WORKDIR /home/party
# A command-line tool, not a service: nothing to probe.
HEALTHCHECK NONE
ENTRYPOINT ["cctrain"]
CMD ["--help"]
