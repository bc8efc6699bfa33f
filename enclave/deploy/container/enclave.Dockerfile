# syntax=docker/dockerfile:1
# The cctrain enclave: `cctrain-enclave serve`, the trainer (torch CPU build, Opacus).
#
#   docker build -f enclave/deploy/container/enclave.Dockerfile -t cctrain-enclave:0.1.0 .
#
# Build from the repository root. The image runs the same program on every platform;
# what the hardware measures is the pod VM / confidential VM that runs it, so pin the
# image by digest in whatever launches it (enclave/deploy/README.md, "Reference values").
# For a reproducible build, replace the tag below by the digest it resolves to today
# (`docker buildx imagetools inspect python:3.11.14-slim-bookworm`): `python@sha256:...`.

FROM python:3.11.14-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/cctrain
# The CPU build of torch first, from PyTorch's CPU index: PyPI's Linux wheel pulls CUDA.
# pyproject.toml pins torch==2.13.0 exactly; the +cpu build satisfies that pin.
RUN /opt/cctrain/bin/pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY pyproject.toml README.md /src/
COPY cctrain /src/cctrain
COPY enclave/cctrain_enclave /src/enclave/cctrain_enclave
# Not editable: the installed files are what runs (and what `cctrain measure` hashes).
RUN /opt/cctrain/bin/pip install '/src[enclave]' \
    && /opt/cctrain/bin/python -c "import torch; assert not torch.version.cuda, torch.version.cuda"

FROM python:3.11.14-slim-bookworm
LABEL org.opencontainers.image.title="cctrain-enclave" \
      org.opencontainers.image.description="cctrain enclave service (gRPC+TLS, attested)" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/cctrain /opt/cctrain
COPY enclave/deploy/container/healthcheck.py /opt/cctrain/bin/cctrain-healthcheck
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/cctrain --no-create-home cctrain \
    && mkdir -p /var/lib/cctrain /etc/cctrain \
    && chown cctrain:cctrain /var/lib/cctrain \
    && chmod 0700 /var/lib/cctrain \
    && chmod 0755 /opt/cctrain/bin/cctrain-healthcheck
ENV PATH=/opt/cctrain/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# The enclave's sealed state (journal, shards, checkpoints): a volume that outlives the
# container. The host can read, replace or roll it back; the enclave detects that.
VOLUME ["/var/lib/cctrain"]
# gRPC+TLS for the parties.
EXPOSE 7443
USER 10001:10001
WORKDIR /var/lib/cctrain
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["cctrain-healthcheck", "127.0.0.1:7443"]
ENTRYPOINT ["cctrain-enclave", "serve"]
# The signed policy is mounted at /etc/cctrain/policy.signed.json. --platform auto never
# picks the simulated TEE; local runs pass --platform simulated (compose.yaml does).
CMD ["--policy", "/etc/cctrain/policy.signed.json", "--state-dir", "/var/lib/cctrain", \
     "--host", "0.0.0.0", "--port", "7443", "--platform", "auto"]
