#!/usr/bin/env bash
# docs/DEPLOYMENT.md on one machine: a TLS SuperLink with SuperNode authentication, two
# registered SuperNodes on 127.0.0.1, each with its own notes file, and one submitted run.
# Usage: scripts/deploy_loopback.sh [WORK_DIR]   (default /tmp/fedprivacy-deploy)
# Everything it starts is stopped when it ends; the run folder stays in WORK_DIR/runs/.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="$PWD/.venv/bin"
export PATH="$BIN:$PATH"  # the SuperLink and SuperNodes start flower-superexec by name
WORK="${1:-/tmp/fedprivacy-deploy}"
PORT=9092
mkdir -p "$WORK"
export FLWR_HOME="$WORK/flwr-home" FLWR_TELEMETRY_ENABLED=0
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true' EXIT

# 1. credentials: a CA, the SuperLink's certificate for 127.0.0.1, two SuperNode key pairs
"$BIN/fedprivacy" credentials "$WORK/creds" --host 127.0.0.1 --host localhost --nodes 2
CA="$WORK/creds/certificates/ca.crt"

# 2. the SuperLink, TLS on, only registered SuperNodes admitted
"$BIN/flower-superlink" --ssl-ca-certfile "$CA" \
  --ssl-certfile "$WORK/creds/certificates/server.pem" \
  --ssl-keyfile "$WORK/creds/certificates/server.key" --enable-supernode-auth \
  --host 127.0.0.1 --port $PORT --disable-runtime-dependency-installation \
  > "$WORK/superlink.log" 2>&1 &
PIDS+=($!)

# 3. flwr's connection to it, then register the two SuperNodes' public keys
mkdir -p "$FLWR_HOME"
cat > "$FLWR_HOME/config.toml" <<TOML
[superlink]
default = "deploy"

[superlink.deploy]
address = "127.0.0.1:$PORT"
root-certificates = "$CA"
TOML
until curl -sf --cacert "$CA" "https://127.0.0.1:$PORT/health" > /dev/null; do
  kill -0 "${PIDS[0]}" 2>/dev/null || { echo "the SuperLink exited: $WORK/superlink.log"; exit 1; }
  sleep 1
done
for i in 1 2; do "$BIN/flwr" supernode register "$WORK/creds/keys/supernode-$i.pub"; done

# 4. each SuperNode with its own private file, named in its node config
for i in 1 2; do
  "$BIN/python" -c "import json, sys; [print(json.dumps({'text': f'node $i private note {k}'})) for k in range(10 + 2 * $i)]" \
    > "$WORK/notes-$i.jsonl"
  "$BIN/flower-supernode" --root-certificates "$CA" \
    --auth-supernode-private-key "$WORK/creds/keys/supernode-$i" \
    --superlink 127.0.0.1:$PORT --port $((PORT + 10 + i)) \
    --node-config "partition-id=$((i - 1)) num-partitions=2 data-path=\"$WORK/notes-$i.jsonl\"" \
    > "$WORK/supernode-$i.log" 2>&1 &
  PIDS+=($!)
done
until [ "$("$BIN/flwr" supernode list --format json | grep -c '"online"')" -ge 2 ]; do sleep 2; done
"$BIN/flwr" supernode list

# 5. submit a run; the exit code is the run's real outcome
"$BIN/fedprivacy" submit configs/deploy/notes.yaml rounds=2 --superlink 127.0.0.1:$PORT \
  --root-certificates "$CA" --out "$WORK/runs/notes-$(date +%Y%m%d-%H%M%S)"
