# xray-service container images. Targets:
#   serve-cpu  `xray serve` on ONNX Runtime (CPU): the core dependencies only, no torch          (the default target)
#   serve-gpu  the same on onnxruntime-gpu, on a CUDA 13 / cuDNN 9 runtime image; run with --gpus all (driver >= 580)
#   train      the trainer (`xray train`, `xray eval`, `xray export`): the `train` extra, with torch
#
# Nothing is downloaded by pip: every install is `--no-index --find-links /wheelhouse`, from wheelhouse/ in the build
# context, which `make wheelhouse` (serve-cpu), `make wheelhouse-gpu` and `make wheelhouse-train` fill on a connected
# machine. Copy the checkout with its wheelhouse/ and the base images to an air-gapped one and build there:
#   make wheelhouse && docker build --target serve-cpu -t xray-service:cpu .
#   docker run --init --stop-timeout 40 -p 8000:8000 -v "$PWD/registry:/app/registry:ro" -v xray-data:/var/lib/xray \
#       xray-service:cpu
# --init (or compose's `init: true`) puts a small init process at PID 1 that forwards SIGTERM and reaps the worker
# processes of `--workers N`; the server then drains requests in flight (up to XRAY_DRAIN_TIMEOUT_S, 30 s) and exits.
# The shipped model set is baked in at /app/registry; mount your registry read-only over it. XRAY_DATA_DIR (the job
# database, uploaded job archives) is /var/lib/xray, a volume owned by the service's user (uid 10001).
# Stages other than the target's are skipped by BuildKit, buildah and podman (not by Docker's legacy builder).

# The Python base: any Debian-like image with python3 3.11 and its venv module (the wheels are cp311).
ARG BASE_IMAGE=python:3.11.14-slim-bookworm
# CUDA 13 + cuDNN 9 runtime libraries for onnxruntime-gpu (its Ubuntu 24.04 brings python3 3.12: see wheelhouse-gpu).
ARG CUDA_BASE_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04

# ---- serve-gpu -------------------------------------------------------------------------------------------------------
FROM ${CUDA_BASE_IMAGE} AS gpu-python
# The CUDA image has no Python: this is the one step that needs a package repository (the image's Ubuntu sources or
# a mirror of them); the versions follow the base image's tag.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

FROM gpu-python AS gpu-build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY wheelhouse/gpu /wheelhouse
COPY pyproject.toml README.md ./
COPY models ./models
COPY training ./training
COPY service ./service
COPY xray ./xray
# Extras on top of the serving stack, comma-separated: postgres (psycopg), ray; their wheels must be in the wheelhouse
# (make wheelhouse-gpu EXTRAS=postgres,ray).
ARG EXTRAS=""
# onnxruntime-gpu instead of onnxruntime: both wheels install the same `onnxruntime` package, so the CPU one must
# never be installed. The requirements are the core dependencies from pyproject.toml with onnxruntime replaced by the
# `gpu` extra, plus EXTRAS; the project itself goes in with --no-deps. The CUDA and cuDNN libraries come from the base
# image, so onnxruntime-gpu's [cuda,cudnn] extras (the same libraries as pip wheels, for a base without them) are not
# installed.
RUN python3 -c "import re, sys, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
extras = ['gpu', *filter(None, sys.argv[1].split(','))]; \
core = [d for d in p['dependencies'] if re.match(r'[A-Za-z0-9._-]+', d).group() != 'onnxruntime']; \
print(*core, *(d for e in extras for d in p['optional-dependencies'][e]), sep=chr(10))" "$EXTRAS" > requirements.txt \
    && python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-index --find-links /wheelhouse --requirement requirements.txt \
    && /opt/venv/bin/pip install --no-index --find-links /wheelhouse --no-deps . \
    && /opt/venv/bin/pip show --quiet onnxruntime-gpu \
    && ! /opt/venv/bin/pip show --quiet onnxruntime 2>/dev/null

FROM gpu-python AS serve-gpu
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    XRAY_HOST=0.0.0.0 XRAY_PORT=8000 XRAY_REGISTRY_DIR=/app/registry XRAY_DATA_DIR=/var/lib/xray
RUN groupadd --gid 10001 xray \
    && useradd --no-log-init --uid 10001 --gid 10001 --home-dir /var/lib/xray --no-create-home \
        --shell /usr/sbin/nologin xray \
    && mkdir -p /var/lib/xray && chown 10001:10001 /var/lib/xray
COPY --from=gpu-build /opt/venv /opt/venv
WORKDIR /app
COPY registry ./registry
VOLUME ["/var/lib/xray"]
USER 10001:10001
EXPOSE 8000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", \
         "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/readyz' % os.environ['XRAY_PORT'], timeout=4)"]
ENTRYPOINT ["xray"]
CMD ["serve"]

# ---- train -----------------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS train-build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY wheelhouse/train /wheelhouse
COPY pyproject.toml README.md ./
COPY models ./models
COPY training ./training
COPY service ./service
COPY xray ./xray
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-index --find-links /wheelhouse '.[train]'

FROM ${BASE_IMAGE} AS train
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    XRAY_REGISTRY_DIR=/app/registry XRAY_DATA_DIR=/var/lib/xray
RUN groupadd --gid 10001 xray \
    && useradd --no-log-init --uid 10001 --gid 10001 --home-dir /var/lib/xray --no-create-home \
        --shell /usr/sbin/nologin xray \
    && mkdir -p /var/lib/xray /app/runs && chown 10001:10001 /var/lib/xray /app/runs
COPY --from=train-build /opt/venv /opt/venv
WORKDIR /app
COPY registry ./registry
# checkpoints go to /app/runs (mount a volume); `xray export` writes to a registry mounted read-write over /app/registry
VOLUME ["/var/lib/xray", "/app/runs"]
USER 10001:10001
STOPSIGNAL SIGTERM
ENTRYPOINT ["xray"]
CMD ["--help"]

# ---- serve-cpu (last: the default target) ----------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS cpu-build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY wheelhouse/serve /wheelhouse
COPY pyproject.toml README.md ./
COPY models ./models
COPY training ./training
COPY service ./service
COPY xray ./xray
# Extras on top of the serving stack, comma-separated: postgres (psycopg), ray; their wheels must be in the wheelhouse
# (make wheelhouse EXTRAS=postgres,ray).
ARG EXTRAS=""
# a venv of its own (not the base's pip): the same steps on python:3.11-slim and on Debian's python3
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-index --find-links /wheelhouse ".${EXTRAS:+[$EXTRAS]}"

FROM ${BASE_IMAGE} AS serve-cpu
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    XRAY_HOST=0.0.0.0 XRAY_PORT=8000 XRAY_REGISTRY_DIR=/app/registry XRAY_DATA_DIR=/var/lib/xray
RUN groupadd --gid 10001 xray \
    && useradd --no-log-init --uid 10001 --gid 10001 --home-dir /var/lib/xray --no-create-home \
        --shell /usr/sbin/nologin xray \
    && mkdir -p /var/lib/xray && chown 10001:10001 /var/lib/xray
COPY --from=cpu-build /opt/venv /opt/venv
WORKDIR /app
COPY registry ./registry
VOLUME ["/var/lib/xray"]
USER 10001:10001
EXPOSE 8000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", \
         "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/readyz' % os.environ['XRAY_PORT'], timeout=4)"]
ENTRYPOINT ["xray"]
CMD ["serve"]
