# Serving images. The service never imports torch, so neither target carries it.
#   docker build --target cpu -t xray-service:cpu .
#   docker build --target gpu -t xray-service:gpu .      (onnxruntime-gpu; run with --gpus all)
# Models come from the registry/ folder baked in below, or a volume mounted over /app/registry.

FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY models ./models
COPY training ./training
COPY service ./service
COPY xray ./xray
COPY registry ./registry

FROM base AS cpu
RUN pip install .
EXPOSE 8000
USER nobody
ENTRYPOINT ["xray"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]

FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 AS gpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
COPY --from=base /app /app
# onnxruntime-gpu replaces the CPU wheel: the two conflict in one environment
# (both install the `onnxruntime` module; remove the CPU one, then reinstall the GPU wheel's files over it)
RUN pip install '.[gpu]' && pip uninstall -y onnxruntime && pip install --force-reinstall --no-deps onnxruntime-gpu
EXPOSE 8000
USER nobody
ENTRYPOINT ["xray"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
