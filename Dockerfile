# OMR bubble classifier: two runtime images from one file.
#   docker build --target cpu -t omr-classifier:0.1.0 .       (also the default: `cpu` is the last stage)
#   docker build --target gpu -t omr-classifier:0.1.0-gpu .
# No `# syntax=` line on purpose: it makes BuildKit pull a frontend image from a registry, and nothing here needs
# more than dockerd's built-in frontend. With the base images as build arguments, an air-gapped build farm can
# build from its own mirror or a locally imported base (docs/deployment.md, "Build without a registry"):
#   DOCKER_BUILDKIT=1 docker build --network host --build-arg PYTHON_IMAGE=omr-local/python:3.11-bookworm .
# Reproducible: the runtime dependencies come from requirements/runtime.lock (pinned, hash-checked), not from
# whatever is newest on PyPI on the day of the build.
# Both run `python -m service` (FastAPI + ONNX Runtime) on the bundled model repository, as a non-root user,
# without torch (torch is an export/training dependency only; the service never imports it).
# See docs/deployment.md for the Helm chart that runs them.

# ---------------------------------------------------------------------------------------------------------------
# Versions. Each one is a build argument so a platform team can bump it without editing the file.
# ---------------------------------------------------------------------------------------------------------------
# CPU: any Debian/Ubuntu image with CPython 3.11 as `python` (plus venv + pip), the Python the lock is resolved
# for. Default: Docker Hub's slim image; tests/deploy/test_image.py uses a debootstrap'd Debian 12 instead.
# onnxruntime's version is the lock's (make lock), so the CPU image runs the version the test suite runs.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
# GPU (CUDA_IMAGE: NVIDIA's registry image or a mirror of it): onnxruntime-gpu 1.31.1 (newest on PyPI at the time of writing) is built against CUDA 13 + cuDNN 9 +
# TensorRT 10. Verified from the wheel itself, not from a table:
#   readelf -d onnxruntime/capi/libonnxruntime_providers_tensorrt.so | grep NEEDED
#   -> libcudart.so.13 libcublas.so.13 libcudnn.so.9 libnvinfer.so.10 libnvonnxparser.so.10
# and its `cuda` extra requires nvidia-cuda-runtime~=13.0, nvidia-cudnn-cu13~=9.0.
# So: the NVIDIA CUDA 13.0 runtime image WITH cuDNN 9 (cudart, cublas, curand, cufft, cudnn), plus the TensorRT
# 10 libraries for CUDA 13 as a pinned pip package (`tensorrt-cu13-libs`). On pypi.org that name is only a
# placeholder sdist that downloads the real wheel from NVIDIA's index at install time, so the build names that
# index itself (NVIDIA_PIP_INDEX). TensorRT 11 would NOT work: it ships libnvinfer.so.11, which this ORT build
# does not load. The gpu stage checks with `ldd` that every library the CUDA and TensorRT providers link resolves.
# Host requirement: NVIDIA driver r580 or newer (CUDA 13), and the NVIDIA container toolkit / device plugin.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
ARG ORT_GPU_VERSION=1.31.1
ARG TENSORRT_VERSION=10.16.1.11
ARG NVIDIA_PIP_INDEX=https://pypi.nvidia.com

# ===============================================================================================================
# gpu-build: the runtime dependencies in a virtual environment (as cpu-build below), on the CUDA image's
# Python, with onnxruntime-gpu + TensorRT libraries in place of onnxruntime. Dependencies before code, as there.
# ===============================================================================================================
FROM ${CUDA_IMAGE} AS gpu-build
ARG ORT_GPU_VERSION
ARG TENSORRT_VERSION
ARG NVIDIA_PIP_INDEX
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 DEBIAN_FRONTEND=noninteractive
# Ubuntu 24.04's python3.12 (the CUDA images carry no Python). Versions are fixed by the base image tag;
# pinning Ubuntu patch versions here would only break the build when the archive moves on.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.12 python3.12-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3.12 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY requirements/runtime.lock .
# onnxruntime and onnxruntime-gpu share the import name `onnxruntime`: every other locked dependency at its
# locked version (hashes dropped: onnxruntime-gpu and the TensorRT libraries are not in the lock), then
# onnxruntime-gpu in its place (the project's `gpu` extra), then the TensorRT libraries it dlopens.
RUN python -c "import re; print('\n'.join(p for p in re.findall(r'^([A-Za-z0-9._-]+==[^ ;]+)', open('runtime.lock').read(), re.M) if not p.startswith('onnxruntime')))" \
        > requirements.txt \
 && { echo "onnxruntime-gpu==${ORT_GPU_VERSION}"; echo "tensorrt-cu13-libs==${TENSORRT_VERSION}"; } >> requirements.txt \
 && pip install --extra-index-url "${NVIDIA_PIP_INDEX}" -r requirements.txt \
 && python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)"

# ===============================================================================================================
# gpu: the GPU runtime image.
# ===============================================================================================================
FROM ${CUDA_IMAGE} AS gpu
ENV DEBIAN_FRONTEND=noninteractive
# Only the interpreter at runtime (no -venv, no pip): the venv's python is a symlink to /usr/bin/python3.12.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.12 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 omr \
 && useradd --system --uid 10001 --gid omr --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin omr
COPY --from=gpu-build /opt/venv /opt/venv
# TensorRT's libraries live in the tensorrt_libs wheel's folder, which the dynamic loader does not search;
# ORT's TensorRT provider dlopens libnvinfer.so.10 by name, so the folder goes on LD_LIBRARY_PATH (the CUDA
# image's own LD_LIBRARY_PATH is kept after it).
ENV PATH=/opt/venv/bin:$PATH \
    LD_LIBRARY_PATH=/opt/venv/lib/python3.12/site-packages/tensorrt_libs:${LD_LIBRARY_PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    OMR_HOST=0.0.0.0 \
    OMR_PORT=8000 \
    OMR_PROVIDERS='["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]' \
    OMR_TRT_CACHE_DIR=/var/cache/omr-trt \
    OMR_WORKERS=2 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
# Fail the build, not the first GPU pod, if a CUDA/cuDNN/TensorRT library the providers link is missing or of
# the wrong major version. libcuda.so.1 is the exception: the driver's, mounted by the NVIDIA container runtime.
RUN ldd /opt/venv/lib/python3.12/site-packages/onnxruntime/capi/libonnxruntime_providers_tensorrt.so \
        /opt/venv/lib/python3.12/site-packages/onnxruntime/capi/libonnxruntime_providers_cuda.so > /tmp/ldd.txt \
 && grep -v "libcuda.so" /tmp/ldd.txt > /tmp/ldd-nodriver.txt \
 && if grep "not found" /tmp/ldd-nodriver.txt; then exit 1; fi \
 && rm /tmp/ldd.txt /tmp/ldd-nodriver.txt
WORKDIR /app
COPY service/ service/
COPY models/repository/ models/repository/
# The TensorRT engine/timing cache folder; in Kubernetes a volume is mounted here (see the chart).
RUN mkdir -p /var/cache/omr-trt && chown 10001:10001 /var/cache/omr-trt
USER 10001:10001
EXPOSE 8000
# gRPC: the Open Inference Protocol's GRPCInferenceService (OMR_GRPC_PORT, 0 = off; docs/api.md)
EXPOSE 8001
# start-period is longer than on CPU: the first start builds TensorRT engines (minutes, once per GPU model).
HEALTHCHECK --interval=15s --timeout=3s --start-period=600s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('OMR_PORT', '8000'), timeout=2)"]
ENTRYPOINT ["python", "-m", "service"]

# ===============================================================================================================
# cpu-build: a virtual environment with the runtime dependencies only (no compiler needed: all are wheels).
# ===============================================================================================================
FROM ${PYTHON_IMAGE} AS cpu-build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# Dependencies in their own layer, keyed on the lock only, so code edits do not reinstall them. The lock is
# [project].dependencies resolved with hashes (the service's runtime set; torch is not in it; `make lock`):
# --require-hashes refuses any file whose hash differs, --no-deps anything the lock does not name, and
# `pip check` fails the build if the locked set is inconsistent.
COPY requirements/runtime.lock .
RUN pip install --require-hashes --no-deps -r runtime.lock \
 && pip check \
 && python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)"

# ===============================================================================================================
# cpu: the CPU runtime image. Last stage, so a plain `docker build .` gives the CPU image.
# ===============================================================================================================
FROM ${PYTHON_IMAGE} AS cpu
# Fixed numeric ids: Kubernetes `runAsNonRoot` can only verify a numeric USER.
RUN groupadd --system --gid 10001 omr \
 && useradd --system --uid 10001 --gid omr --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin omr
COPY --from=cpu-build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    OMR_HOST=0.0.0.0 \
    OMR_PORT=8000 \
    OMR_PROVIDERS='["CPUExecutionProvider"]' \
    OMR_WORKERS=0
# OMR_WORKERS: worker processes on the shared port. CPU 0 = one per CPU the container is given (the cgroup quota
# of `docker run --cpus` / a pod's CPU limit, not the host's count); GPU 2 = two CUDA contexts, each batching its
# own traffic (docs/performance.md, "every core").
WORKDIR /app
# Code after dependencies. Only what the service needs: the `service` package and the model repository
# (the default OMR_MODEL_REPOSITORY resolves to /app/models/repository). Root-owned and read-only to `omr`.
COPY service/ service/
COPY models/repository/ models/repository/
USER 10001:10001
EXPOSE 8000
# gRPC: the Open Inference Protocol's GRPCInferenceService (OMR_GRPC_PORT, 0 = off; docs/api.md)
EXPOSE 8001
# Live endpoint only (not /readyz): Docker restarts on liveness, and warm-up must not count as a failure.
# Python instead of curl: the slim image has no curl, and one fewer binary is one fewer CVE.
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('OMR_PORT', '8000'), timeout=2)"]
# Exec form: python is PID 1 and receives SIGTERM itself, so the service's drain (readiness off, finish
# in-flight work within OMR_DRAIN_TIMEOUT_S) runs. A shell-form entrypoint would swallow the signal.
ENTRYPOINT ["python", "-m", "service"]

