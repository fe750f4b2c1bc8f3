# The face-gallery web demo (python app/app.py) with the pinned requirements.
#   docker build -t h-model-app .
#   docker run -p 127.0.0.1:7860:7860 -v h_gallery:/data h-model-app
# CPU by default. CUDA: --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128, then docker run --gpus all ...
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

# Where torch and torchvision come from (the CPU-only wheels by default; empty: the default index).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    HF_HUB_DISABLE_TELEMETRY=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# python3 + venv where the base has none (CUDA images); libglib for OpenCV
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libglib2.0-0 \
    && if ! command -v python3 >/dev/null; then \
         apt-get install -y --no-install-recommends python3 python3-venv; fi \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

WORKDIR /app
COPY requirements.txt .
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
      pip install --index-url "$TORCH_INDEX_URL" \
        "$(grep '^torch==' requirements.txt)" "$(grep '^torchvision==' requirements.txt)"; \
    fi \
    && pip install -r requirements.txt

COPY pyproject.toml README.md ./
COPY h_model ./h_model
COPY app ./app

RUN useradd --create-home --uid 10001 app \
    && mkdir -p /data/gallery \
    && chown -R app:app /data
USER 10001:10001
VOLUME ["/data"]
EXPOSE 7860

HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7860/api/v1/health', timeout=8)"]

# 0.0.0.0 inside the container so the published port reaches it; publish it on 127.0.0.1 (above)
# to keep it local. A login: -e H_APP_AUTH=user:password
CMD ["python", "app/app.py", "--host", "0.0.0.0", "--port", "7860", "--gallery", "/data/gallery"]
