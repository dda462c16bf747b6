#!/bin/sh
# Seeds the OpenBao dev server with the example secrets the shipped runbooks read (demo values only).
set -eu
bao secrets enable -path=kv kv-v2 2>/dev/null || true
bao kv put kv/runbot/kubernetes token=demo-kubernetes-token
bao kv put kv/runbot/argocd token=demo-argocd-token
bao kv put kv/runbot/slack bot_token=xoxb-demo signing_secret=demo-signing-secret
echo "openbao seeded"
