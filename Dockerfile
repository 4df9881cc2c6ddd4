# One image for every component (istiod-lite, ztunnel, ztunnel-node-agent, waypoint, meshctl).
# Build: make image (docker or podman). Non-root by default; the node agents run as root through
# their DaemonSets' securityContext because they program other pods' network namespaces.
FROM python:3.11-slim-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables iproute2 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY mesh mesh
COPY ztunnel ztunnel
COPY waypoint waypoint
COPY istiod_lite istiod_lite
COPY meshctl meshctl
COPY daemonset daemonset
COPY scripts/otlp-protos.sh scripts/
RUN pip install --no-cache-dir . && scripts/otlp-protos.sh python && useradd --uid 1337 --user-group --no-create-home istio-proxy
USER 1337:1337
ENTRYPOINT []
