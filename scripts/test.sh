#!/usr/bin/env bash
# Install what the tests need, start PostgreSQL and Redis if they are not answering, run every test.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v bwrap >/dev/null || need_apt+=(bubblewrap)
command -v git >/dev/null || need_apt+=(git)
command -v curl >/dev/null || need_apt+=(curl)
command -v setpriv >/dev/null || need_apt+=(util-linux)
command -v npm >/dev/null || need_apt+=(nodejs npm)
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v pg_ctlcluster >/dev/null || need_apt+=(postgresql)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)  # the browser tests of the pages (Playwright drives it)
# the docker sandbox provider's tests: podman's Docker API (tests/support/podman.py starts the service)
command -v podman >/dev/null || need_apt+=(podman)
command -v runc >/dev/null || need_apt+=(runc)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== apt-get install ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

echo "== pip install -e .[test]"
python3 -m pip install -q --disable-pip-version-check -e '.[test]'

if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  echo "== starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
  pg_isready -q -h 127.0.0.1 -p 5432 || { echo "PostgreSQL did not start on 127.0.0.1:5432" >&2; exit 1; }
fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  echo "== starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no || true
  for _ in $(seq 1 30); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 1; done
  redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || { echo "Redis did not start on 127.0.0.1:6379" >&2; exit 1; }
fi

echo "== ruff, mypy --strict, import-linter"
python3 -m ruff check --quiet bot webhooks runner tests bench migrations
python3 -m mypy
lint-imports --no-cache >/dev/null || lint-imports --no-cache

echo "== pytest"
# Three pytest-xdist workers, a file each at a time (a file's tests share its fixtures and servers): most
# tests wait on subprocesses, sockets and sandboxes, so three keep two cores busy. SESAME_TEST_WORKERS=0
# runs them in this one process.
exec python3 -m pytest -q -p no:cacheprovider -n "${SESAME_TEST_WORKERS:-3}" --dist loadfile "$@"
