# The image of the docker sandbox provider (SANDBOX_PROVIDER=docker, DOCKER_SANDBOX_IMAGE).
#
#   docker build -f docker/sandbox.Dockerfile -t sesame-sandbox:latest docker/
#   podman build -f docker/sandbox.Dockerfile -t sesame-sandbox:latest docker/
#
# then DOCKER_SANDBOX_IMAGE=sesame-sandbox:latest. Sesame runs every container read-only, as the
# session's own uid (no user is needed here), with no network but its egress proxy; it mounts the
# project, HOME, /etc/passwd and /etc/resolv.conf itself. The agent CLI Sesame runs is the one
# `sesame agents install NAME` put in its data directory, mounted read-only at the same path as the
# local provider shows it; the copies installed here are for an image used without that data dir.
# Pin versions (AGENT_VERSIONS) to make the image reproducible.
FROM debian:bookworm-slim

ARG AGENT_PACKAGES="@anthropic-ai/claude-code @openai/codex @google/gemini-cli @github/copilot @sourcegraph/amp opencode-ai"

RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates git nodejs npm python3 ripgrep procps less \
 && npm install -g --no-fund --no-audit ${AGENT_PACKAGES} \
 && npm cache clean --force \
 && rm -rf /var/lib/apt/lists/*

# pid 1 is given by Sesame (a shell that sleeps and reaps); nothing runs by default
CMD ["/bin/sh"]
