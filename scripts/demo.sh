#!/usr/bin/env bash
# Run the bot on the embedded SQLite default with the demo runbook; fire a sample alert from another shell.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNBOT_SKIP_BROWSER=1 scripts/setup.sh
export RUNBOT_DATA_DIR=${RUNBOT_DATA_DIR:-data}
export RUNBOT_RUNBOOKS_DIR=${RUNBOT_RUNBOOKS_DIR:-runbooks}
export RUNBOT_ALERTMANAGER_WEBHOOK_TOKEN=${RUNBOT_ALERTMANAGER_WEBHOOK_TOKEN:-demo-webhook-token}
export RUNBOT_COMMAND_ALLOW=${RUNBOT_COMMAND_ALLOW:-'["df", "du", "uptime"]'}
export RUNBOT_HTTP_ALLOW_HOSTS=${RUNBOT_HTTP_ALLOW_HOSTS:-'["127.0.0.1:8080"]'}
# the shipped examples reach hosts over ssh with these programs (they lint clean; they need real hosts to run)
export RUNBOT_COMMAND_SSH_ALLOW=${RUNBOT_COMMAND_SSH_ALLOW:-'["du", "find", "certbot"]'}
export RUNBOT_COMMAND_SSH_HOSTS=${RUNBOT_COMMAND_SSH_HOSTS:-'["*.internal.example"]'}
export RUNBOT_HTTP_ALLOW_CIDRS=${RUNBOT_HTTP_ALLOW_CIDRS:-'["127.0.0.1/32"]'}
.venv/bin/runbot lint
cat <<MSG

runbot is starting on http://127.0.0.1:${RUNBOT_PORT:-8080} (SQLite in ${RUNBOT_DATA_DIR}/runbot.db).
In another terminal:
  export RUNBOT_ALERTMANAGER_WEBHOOK_TOKEN=${RUNBOT_ALERTMANAGER_WEBHOOK_TOKEN}
  export RUNBOT_APPROVAL_CLI_ANY_HOST_USER=true   # demo only: steps without cli_users may be approved by any host user
  .venv/bin/runbot fire runbooks/examples/disk-usage-firing.json   # send a sample Alertmanager alert
  .venv/bin/runbot runs list                                        # see the run
  .venv/bin/runbot runs approve <RUN>                               # approve the guarded remediation (as your host user)
  .venv/bin/runbot runs show <RUN>                                  # steps, timings, results
MSG
exec .venv/bin/runbot serve
