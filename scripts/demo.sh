#!/usr/bin/env bash
# Runs the whole of Tether on this machine, all on 127.0.0.1: a throwaway CA, the relay,
# one agent (node "node-a" of cluster "demo") and a small sample on-prem service. The
# agent gets its identity the way a real one does: a one-time token and `enroll`.
# Prints a curl line that goes through the tunnel, then keeps running until Ctrl-C.
#
#   scripts/demo.sh            # run until Ctrl-C
#   scripts/demo.sh --check    # run the curl once, then stop (exit code says if it worked)
#
# Ports can be changed with TUNNEL_PORT, INGRESS_PORT, ADMIN_PORT, AGENT_ADMIN_PORT and
# SERVICE_PORT.
set -euo pipefail
cd "$(dirname "$0")/.."

TUNNEL_PORT=${TUNNEL_PORT:-4433}
INGRESS_PORT=${INGRESS_PORT:-8080}
ADMIN_PORT=${ADMIN_PORT:-9090}
SERVICE_PORT=${SERVICE_PORT:-3000}
AGENT_ADMIN_PORT=${AGENT_ADMIN_PORT:-9091}

echo "building (debug) ..." >&2
cargo build --workspace --quiet
bin=target/debug

work=$(mktemp -d -t tether-demo.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

"$bin/tether-certs" ca init --dir "$work/pki" >/dev/null
"$bin/tether-certs" issue relay --dir "$work/pki" --san localhost --san 127.0.0.1 >/dev/null

cat >"$work/relay.toml" <<TOML
[tunnel]
listen = "127.0.0.1:$TUNNEL_PORT"
ca = "$work/pki/ca.pem"
cert = "$work/pki/relay.pem"
key = "$work/pki/relay.key"

[ingress]
listen = "127.0.0.1:$INGRESS_PORT"

[admin]
listen = "127.0.0.1:$ADMIN_PORT"

[enroll]
ca_key = "$work/pki/ca.key"
TOML

cat >"$work/agent.toml" <<TOML
relay = "127.0.0.1:$TUNNEL_PORT"
server_name = "localhost"
state_dir = "$work/agent-state"
connections = 2

[[routes]]
prefix = "/"
upstream = "http://127.0.0.1:$SERVICE_PORT"

[admin]
listen = "127.0.0.1:$AGENT_ADMIN_PORT"
TOML

"$bin/tether-sample-service" --listen "127.0.0.1:$SERVICE_PORT" --name on-prem-service >"$work/service.log" 2>&1 &
pids+=($!)
"$bin/tether-relay" --config "$work/relay.toml" 2>"$work/relay.log" &
pids+=($!)

# Wait (at most 10 s) for the relay to be up.
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done

# Enrollment: the operator makes a token; the agent's host makes its own key pair.
token=$("$bin/tether-certs" token create --dir "$work/pki" --node node-a --cluster demo --ttl 10m)
"$bin/tether-agent" enroll --relay "127.0.0.1:$TUNNEL_PORT" --server-name localhost \
  --token "$token" --dir "$work/agent-state" >&2
"$bin/tether-agent" --config "$work/agent.toml" 2>"$work/agent.log" &
pids+=($!)

# Wait (at most 15 s) until the relay holds both of the agent's tunnel connections.
for _ in $(seq 1 150); do
  if curl -fsS "http://127.0.0.1:$ADMIN_PORT/api/nodes" 2>/dev/null | grep -q '"node":"node-a"'; then
    break
  fi
  sleep 0.1
done

cmd="curl -sS -H 'x-node-id: node-a' http://127.0.0.1:$INGRESS_PORT/info"
if [[ "${1:-}" == "--check" ]]; then
  eval "$cmd"
  echo
  exit 0
fi

cat <<MSG

Tether is running (logs in $work):
  relay   tunnel udp/127.0.0.1:$TUNNEL_PORT, ingress http://127.0.0.1:$INGRESS_PORT, admin http://127.0.0.1:$ADMIN_PORT/api/nodes
  agent   node-a (cluster demo, enrolled with a one-time token) -> on-prem service http://127.0.0.1:$SERVICE_PORT

Try it:
  $cmd
  curl -sS -H 'x-cluster-id: demo' http://127.0.0.1:$INGRESS_PORT/bytes/1048576 | wc -c

Ctrl-C stops everything.
MSG
wait
