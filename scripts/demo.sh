#!/usr/bin/env bash
# The real loop on 127.0.0.1: a demo exporter (a disk that fills, a service whose errors rise), Prometheus
# scraping it with deploy/demo/rules.yml, Alertmanager routing the alerts to runbot, and runbot (SQLite).
# Approve remediations from another shell: runbot runs approve RUN. Ctrl-C stops everything.
#   DEMO_PROMETHEUS_PORT (9390) DEMO_ALERTMANAGER_PORT (9393) DEMO_EXPORTER_PORT (9399) RUNBOT_PORT (8080)
#   DEMO_FILL_SECONDS (120), DEMO_ERROR_SECONDS (300): how fast the problems grow; DEMO_SKIP_SETUP=1: no setup
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -n "${DEMO_SKIP_SETUP:-}" ]] || RUNBOT_SKIP_BROWSER=1 scripts/setup.sh
PY=${DEMO_PYTHON:-.venv/bin/python}
RUNBOT=${DEMO_RUNBOT:-.venv/bin/runbot}
PROM_PORT=${DEMO_PROMETHEUS_PORT:-9390}
AM_PORT=${DEMO_ALERTMANAGER_PORT:-9393}
EXP_PORT=${DEMO_EXPORTER_PORT:-9399}
export RUNBOT_PORT=${RUNBOT_PORT:-8080}
DEMO_DIR=${DEMO_DIR:-data/demo}

for port in "$RUNBOT_PORT" "$PROM_PORT" "$AM_PORT" "$EXP_PORT"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "demo: port $port on 127.0.0.1 is in use; pick another with RUNBOT_PORT / DEMO_*_PORT" >&2
    exit 1
  fi
done

# The policy lives in runbot.yaml (every runbot command in the checkout finds it); override only what the
# chosen ports change.
export RUNBOT_DATA_DIR=${RUNBOT_DATA_DIR:-$DEMO_DIR}
export RUNBOT_PROMETHEUS_URL=http://127.0.0.1:$PROM_PORT
export RUNBOT_ALERTMANAGER_URL=http://127.0.0.1:$AM_PORT
[[ "$EXP_PORT" == 9399 ]] || export RUNBOT_HTTP_ALLOW_HOSTS="[\"127.0.0.1:$EXP_PORT\"]"

mkdir -p "$DEMO_DIR/prometheus" "$DEMO_DIR/alertmanager"
sed -e "s/127.0.0.1:9399/127.0.0.1:$EXP_PORT/; s/127.0.0.1:9393/127.0.0.1:$AM_PORT/" \
  deploy/demo/prometheus.yml >"$DEMO_DIR/prometheus.yml"
cp deploy/demo/rules.yml "$DEMO_DIR/rules.yml"
sed -e "s#http://127.0.0.1:8080/#http://127.0.0.1:$RUNBOT_PORT/#" deploy/demo/alertmanager.yml >"$DEMO_DIR/alertmanager.yml"

pids=()
cleanup() {
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$RUNBOT" lint
"$PY" -m runbot.demo.exporter --port "$EXP_PORT" --fill-seconds "${DEMO_FILL_SECONDS:-120}" \
  --error-seconds "${DEMO_ERROR_SECONDS:-300}" >"$DEMO_DIR/exporter.log" 2>&1 &
pids+=($!)
"${DEMO_PROMETHEUS_BIN:-prometheus}" --config.file="$DEMO_DIR/prometheus.yml" \
  --storage.tsdb.path="$DEMO_DIR/prometheus" --web.listen-address="127.0.0.1:$PROM_PORT" \
  --storage.tsdb.retention.time=1d --log.level=warn >"$DEMO_DIR/prometheus.log" 2>&1 &
pids+=($!)
"${DEMO_ALERTMANAGER_BIN:-prometheus-alertmanager}" --config.file="$DEMO_DIR/alertmanager.yml" \
  --storage.path="$DEMO_DIR/alertmanager" --web.listen-address="127.0.0.1:$AM_PORT" \
  --cluster.listen-address= --log.level=warn >"$DEMO_DIR/alertmanager.log" 2>&1 &
pids+=($!)

cat <<MSG

The demo runs on 127.0.0.1 (logs and data in $DEMO_DIR/):
  runbot        http://127.0.0.1:$RUNBOT_PORT
  Prometheus    http://127.0.0.1:$PROM_PORT/alerts     (rules: deploy/demo/rules.yml)
  Alertmanager  http://127.0.0.1:$AM_PORT
  exporter      http://127.0.0.1:$EXP_PORT/state       (the disk is full in ${DEMO_FILL_SECONDS:-120}s)
In a second terminal, inside this checkout:
  .venv/bin/runbot runs list                     # DemoDiskFillingUp starts demo-disk-filling-up within minutes
  .venv/bin/runbot runs show <RUN>               # the Prometheus diagnostics and the graph
  .venv/bin/runbot runs approve <RUN>            # the cleanup runs; the alert resolves
  .venv/bin/runbot incidents list                # and the postmortem draft: runbot postmortem <INCIDENT>
MSG
"$RUNBOT" serve &
pids+=($!)
wait -n "${pids[@]}" || true
echo "demo: stopping everything (logs in $DEMO_DIR/)" >&2
