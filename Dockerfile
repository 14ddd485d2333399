# The gRPC inspection service: `adapt serve` on ONNX Runtime. No torch inside: the image only
# serves models exported by `adapt retrain` / `adapt export`.
#
#   docker build -t adapt-serve .                                   # CPU (onnxruntime)
#   docker build -t adapt-serve:cuda --build-arg VARIANT=cuda .     # GPU (onnxruntime-gpu, CUDA provider)
#   docker run -p 50051:50051 -v $PWD/runs/my-run:/models adapt-serve            # serves /models/model.onnx
#   docker run -p 50051:50051 -e MLFLOW_TRACKING_URI=http://mlflow:5000 adapt-serve \
#       serve --model models:/parts@champion --port 50051                         # follows the registry alias
#
# The CUDA variant needs the NVIDIA container toolkit (`docker run --gpus all ...`) and a base
# image with the CUDA and cuDNN libraries onnxruntime-gpu expects, e.g.
#   --build-arg BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 --build-arg VARIANT=cuda
# (that base brings its own python3; ubuntu's is 3.12, which adapt supports).
ARG BASE=python:3.11-slim
FROM ${BASE}

ARG VARIANT=cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN if ! command -v pip3 >/dev/null 2>&1; then \
        apt-get update && apt-get install -y --no-install-recommends python3-pip python3-venv && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv /opt/adapt \
    && useradd --create-home --uid 10001 adapt
ENV PATH=/opt/adapt/bin:$PATH

WORKDIR /app
# requirements/serve.lock: the exact versions the tests ran with (refresh: bash requirements/refresh.sh).
# The CUDA variant swaps the onnxruntime pin for onnxruntime-gpu, which is released on its own
# schedule (often a minor version behind), so it takes the newest onnxruntime-gpu >= 1.20.
COPY requirements/serve.lock ./
RUN if [ "$VARIANT" = "cuda" ]; then \
        sed 's/^onnxruntime==.*/onnxruntime-gpu>=1.20/' serve.lock > /tmp/requirements.txt; \
    else \
        cp serve.lock /tmp/requirements.txt; \
    fi \
    && pip install -r /tmp/requirements.txt

COPY pyproject.toml README.md ./
COPY adapt ./adapt
COPY services ./services
COPY protos ./protos
# --no-deps: the serving dependencies above, not the training stack (torch, Lightning, open_clip)
RUN pip install --no-deps . && mkdir -p /models /data && chown adapt:adapt /models /data

USER adapt
WORKDIR /data
VOLUME ["/models", "/data"]
EXPOSE 50051 9090
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-m", "services.healthcheck", "localhost:50051"]
ENTRYPOINT ["adapt"]
CMD ["serve", "--model", "/models/model.onnx", "--port", "50051", "--data-dir", "/data/feedback", "--metrics-port", "9090"]
