#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian machine: system packages the tests use, PostgreSQL running,
# a virtualenv with runbot and its test tools. Safe to run again; quick when everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)
command -v prometheus-alertmanager >/dev/null 2>&1 || need_apt+=(prometheus-alertmanager)
if [ "${RUNBOT_SKIP_BROWSER:-}" != "1" ]; then
  command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
fi
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  echo "setup: installing ${need_apt[*]} (apt-get)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  if [ -d /etc/postgresql ]; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.runbot-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing runbot and test tools into .venv (pip)"
  .venv/bin/pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/pip install -q --disable-pip-version-check -e ".[test]"
  touch "$stamp"
fi
# deploy/ checks (tests/deploy): hadolint, Helm as a library, kubernetes-validate, checkov. checkov pins
# packaging<24 while pytest wants >=24; both work with the newer one, so it is put back afterwards.
deploy_stamp=.venv/.runbot-deploy-installed
if [ ! -f "$deploy_stamp" ] || [ pyproject.toml -nt "$deploy_stamp" ]; then
  echo "setup: installing the deploy check tools into .venv (pip)"
  .venv/bin/pip install -q --disable-pip-version-check -e ".[deploy]" 2>/dev/null || .venv/bin/pip install -q --disable-pip-version-check -e ".[deploy]"
  .venv/bin/pip install -q --disable-pip-version-check "packaging>=24" 2>/dev/null || true
  touch "$deploy_stamp"
fi
