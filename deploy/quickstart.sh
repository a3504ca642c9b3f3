#!/usr/bin/env bash
# Builds Skerry, starts a cloudcore and a local edgecore on this machine, and runs a sample pod.
# Everything lives under ${SKERRY_DEMO_DIR:-/tmp/skerry-demo}; stop it with deploy/quickstart.sh stop.
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO=${SKERRY_DEMO_DIR:-/tmp/skerry-demo}
API=${SKERRY_API_PORT:-6443}
HUB=${SKERRY_HUB_PORT:-7443}
MQTT=${SKERRY_MQTT_PORT:-1883}

stop() {
  for f in "$DEMO"/*.pid; do
    [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
    rm -f "$f"
  done
  # Pods outlive edgecore by design (as with kubelet); stop the demo's pod processes too.
  pkill -f -- "--container-dir $DEMO/" 2>/dev/null || true
  for p in /proc/[0-9]*; do
    case "$(readlink "$p/cwd" 2>/dev/null)" in "$DEMO"/*) kill -9 "${p#/proc/}" 2>/dev/null || true ;; esac
  done
}
if [ "${1:-}" = "stop" ]; then stop; echo "stopped"; exit 0; fi

deploy/setup.sh
cargo build --release --bins
BIN=target/release
stop
mkdir -p "$DEMO"

"$BIN/cloudcore" --data-dir "$DEMO/cloud" serve --api-addr "127.0.0.1:$API" --hub-addr "127.0.0.1:$HUB" \
  --mqtt-listen "127.0.0.1:$MQTT" >"$DEMO/cloudcore.log" 2>&1 &
echo $! >"$DEMO/cloudcore.pid"
for _ in $(seq 100); do [ -f "$DEMO/cloud/pki/ca.crt" ] && break; sleep 0.1; done

# Wait for the API (its /healthz is public), then write an admin kubeconfig with a client
# certificate from cloudcore's CA: anonymous requests are refused.
for _ in $(seq 100); do
  KUBECONFIG=/dev/null kubectl --server "https://127.0.0.1:$API" --certificate-authority "$DEMO/cloud/pki/ca.crt" \
    get --raw /healthz >/dev/null 2>&1 && break
  sleep 0.1
done
"$BIN/cloudcore" --data-dir "$DEMO/cloud" kubeconfig --user admin --server "https://127.0.0.1:$API" \
  --out "$DEMO/kubeconfig"
KUBECTL=(kubectl --kubeconfig "$DEMO/kubeconfig")
for _ in $(seq 100); do "${KUBECTL[@]}" get --raw /healthz >/dev/null 2>&1 && break; sleep 0.1; done

if [ ! -f "$DEMO/edge/pki/report.key" ]; then
  # A token made for demo-edge also re-joins it when an older demo left it registered.
  read -r TOKEN HASH < <("$BIN/cloudcore" --data-dir "$DEMO/cloud" token create --ttl 10m --node demo-edge | awk '/^token:/{t=$2} /^ca-hash:/{h=$2} END{print t, h}')
  "$BIN/edgecore" --data-dir "$DEMO/edge" join --server "127.0.0.1:$HUB" --token "$TOKEN" --ca-hash "$HASH" \
    --node-name demo-edge --mqtt-url "mqtt://127.0.0.1:$MQTT" --label site=demo
fi
"$BIN/edgecore" --data-dir "$DEMO/edge" run --node-ip 127.0.0.1 >"$DEMO/edgecore.log" 2>&1 &
echo $! >"$DEMO/edgecore.pid"
sleep 1
if ! kill -0 "$(cat "$DEMO/edgecore.pid")" 2>/dev/null; then
  echo "edgecore did not start:"; tail -5 "$DEMO/edgecore.log"; exit 1
fi

"${KUBECTL[@]}" get pod hello >/dev/null 2>&1 || "${KUBECTL[@]}" create --validate=false -f deploy/examples/hello-pod.yaml
# Wait until its container runs and is ready (a pod left over from an earlier demo, whose
# process the last `stop` killed, comes back after the usual restart back-off).
for _ in $(seq 150); do
  [ "$("${KUBECTL[@]}" get pod hello -o jsonpath='{.status.containerStatuses[0].ready}' 2>/dev/null)" = "true" ] && break
  sleep 0.2
done
"${KUBECTL[@]}" get pods -o wide
cat <<TXT

Skerry is running: cloudcore (API https://127.0.0.1:$API, hub udp/$HUB, MQTT $MQTT) and edgecore "demo-edge".
See the pod:    kubectl --kubeconfig $DEMO/kubeconfig get pods -o wide
                (an admin kubeconfig: $BIN/cloudcore --data-dir $DEMO/cloud kubeconfig --user admin --server https://127.0.0.1:$API)
Its log:        $BIN/edgecore --data-dir $DEMO/edge logs hello
Logs:           $DEMO/cloudcore.log  $DEMO/edgecore.log
Stop:           deploy/quickstart.sh stop
TXT
