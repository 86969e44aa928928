# llm-extproc: the ext_proc server and the simulator (no Envoy: it runs in its own container).
# Multi-stage: wheels are built with the toolchain, the runtime image only installs them.
FROM python:3.11-slim AS build
# a C compiler for the complexity scorer's extension (setup.py); the runtime image has none
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY extproc ./extproc
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[dns,k8s,redis,providersim]"

FROM python:3.11-slim
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin llm
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels "llm-extproc[dns,k8s,redis,providersim]" && rm -rf /wheels
# One policy set: a folder given to --policy is loaded as one set, so the image ships exactly one file.
COPY policies/minimal.yaml /etc/llm-extproc/policies/policy.yaml
USER 10001
EXPOSE 9002 9464
ENTRYPOINT ["llm-extproc"]
CMD ["serve", "--host=0.0.0.0", "--metrics-host=0.0.0.0", "--discovery=k8s", "--policy=/etc/llm-extproc/policies"]
