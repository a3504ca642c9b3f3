#!/usr/bin/env bash
# Builds Skerry, starts a cloudcore, a private containerd and a local edgecore on this machine,
# loads the registry-free images, and runs a sample pod in a real container.
# Everything lives under ${SKERRY_DEMO_DIR:-/tmp/skerry-demo}; stop it with deploy/quickstart.sh stop.
# Needs root (containerd, CNI networking), as kubelet does.
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO=${SKERRY_DEMO_DIR:-/tmp/skerry-demo}
API=${SKERRY_API_PORT:-6443}
HUB=${SKERRY_HUB_PORT:-7443}
MQTT=${SKERRY_MQTT_PORT:-8883}
CTRD="$DEMO/containerd"
BRIDGE=skerrydemo0
NETWORK=skerry-demo
# The demo cloud's cluster CIDR: the node's pod CIDR (spec.podCIDR) is a /24 of it, from which
# edgecore writes the CNI configuration (--cni-conf-dir), so the demo pod gets an address of
# its node's own range. Its prefix finds the demo's leftovers.
CLUSTER_CIDR=10.188.0.0/16
SUBNET_PREFIX=10.188.
# The demo edge's Service proxy table and cluster DNS interface (left in place when edgecore
# stops, on purpose; `stop` removes them).
PROXY_TABLE=skerrydemo
DNS_IFACE=skerrydemo-dns
BIN=target/release

stop() {
  # Delete the demo's workloads, then its pods, while the cloud and the edge still run, so
  # edgecore stops the containers and CNI releases their network (pods outlive edgecore by
  # design, as with kubelet). Workloads first: their controllers would replace deleted pods.
  if [ -f "$DEMO/kubeconfig" ] && [ -f "$DEMO/edgecore.pid" ] && kill -0 "$(cat "$DEMO/edgecore.pid")" 2>/dev/null; then
    kubectl --kubeconfig "$DEMO/kubeconfig" delete deployments,replicasets,daemonsets,statefulsets \
      --all --all-namespaces --wait --timeout=30s >/dev/null 2>&1 || true
    kubectl --kubeconfig "$DEMO/kubeconfig" delete pods --all --all-namespaces --wait --timeout=30s >/dev/null 2>&1 || true
  fi
  # From here on nothing may start a container: stop the edge before sweeping what is left.
  stop_pid "$DEMO/edgecore.pid"
  # Without a running edge nothing removes the containers: kill them through containerd.
  if [ -S "$CTRD/containerd.sock" ]; then
    for t in $(ctr -a "$CTRD/containerd.sock" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr -a "$CTRD/containerd.sock" -n k8s.io tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true
    done
  fi
  for f in "$DEMO"/*.pid; do
    [ -f "$f" ] && stop_pid "$f"
  done
  # Whatever is left of containerd's shims and containers, its mounts and the demo network
  # (a pod network namespace that CNI never tore down holds an address of the demo subnet).
  pkill -9 -f -- "$CTRD/containerd.sock" 2>/dev/null || true
  { grep -o " $DEMO/[^ ]*" /proc/self/mountinfo 2>/dev/null || true; } | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done
  for ns in $(ip netns list 2>/dev/null | awk '/^cni-/ {print $1}'); do
    if ip -n "$ns" -4 addr show 2>/dev/null | grep -q "inet $SUBNET_PREFIX"; then
      ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
      ip netns delete "$ns" 2>/dev/null || true
    fi
  done
  ip link del "$BRIDGE" 2>/dev/null || true
  rm -rf "/var/lib/cni/networks/$NETWORK"
  nft delete table ip "$PROXY_TABLE" 2>/dev/null || true
  ip link del "$DNS_IFACE" 2>/dev/null || true
}
# Stops the process whose pid file is $1 (TERM, then up to 5 s) and removes the file.
stop_pid() {
  [ -f "$1" ] || return 0
  local pid
  pid="$(cat "$1")"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  rm -f "$1"
}
if [ "${1:-}" = "stop" ]; then stop; echo "stopped"; exit 0; fi
[ "$(id -u)" -eq 0 ] || { echo "quickstart: run as root (containerd and pod networking need it)"; exit 1; }

deploy/setup.sh
cargo build --release --bins
deploy/images/build.sh target/images
stop
mkdir -p "$DEMO" "$CTRD/cni"
# The daemons refuse a data directory others may enter; demos of earlier versions made them 0755.
for d in "$DEMO/cloud" "$DEMO/edge"; do if [ -d "$d" ]; then chmod 700 "$d"; fi; done

# containerd: the edge node configuration of deploy/containerd/, with private paths.
sed -e "s#^version = 2#version = 2\nroot = \"$CTRD/root\"\nstate = \"$CTRD/state\"\n[grpc]\n  address = \"$CTRD/containerd.sock\"\n[ttrpc]\n  address = \"$CTRD/containerd.sock.ttrpc\"#" \
  -e "s#/etc/cni/net.d#$CTRD/cni#" deploy/containerd/config.toml >"$CTRD/config.toml"
# A fallback until edgecore writes the node's own (the first sync): its range, 10.188.255.0/24,
# is never a node's pod CIDR here, so the demo pod's address shows which configuration it got.
sed -e "s#\"skerry0\"#\"$BRIDGE\"#" -e "s#\"name\": \"skerry\"#\"name\": \"$NETWORK\"#" -e "s#10.88.0.0/16#10.188.255.0/24#" \
  deploy/containerd/10-skerry.conflist >"$CTRD/cni/10-skerry.conflist"
setsid containerd --config "$CTRD/config.toml" >"$DEMO/containerd.log" 2>&1 &
echo $! >"$DEMO/containerd.pid"
for _ in $(seq 100); do [ -S "$CTRD/containerd.sock" ] && break; sleep 0.1; done
# Air-gapped style: load the images from files, no registry.
"$BIN/edgecore" image import --containerd-socket "$CTRD/containerd.sock" target/images/pause.tar target/images/busybox.tar

"$BIN/cloudcore" --data-dir "$DEMO/cloud" serve --api-addr "127.0.0.1:$API" --hub-addr "127.0.0.1:$HUB" \
  --mqtt-listen "127.0.0.1:$MQTT" --cluster-cidr "$CLUSTER_CIDR" >"$DEMO/cloudcore.log" 2>&1 &
echo $! >"$DEMO/cloudcore.pid"
for _ in $(seq 100); do [ -f "$DEMO/cloud/pki/ca.crt" ] && break; sleep 0.1; done
if [ ! -f "$DEMO/cloud/pki/ca.crt" ]; then
  echo "cloudcore did not create its CA within 10 s (cloudcore.log follows):"; tail -20 "$DEMO/cloudcore.log"; exit 1
fi

# Wait for the API on its public /readyz with curl, pinning cloudcore's CA. (kubectl is no good
# here: without credentials kubectl 1.32 prompts for a user name and fails, so such a loop never
# succeeds.) Once the API serves, its PKI is complete: write an admin kubeconfig with a client
# certificate from that CA (anonymous requests are refused) and check that it is accepted. An API
# that never comes up stops the quickstart here, with cloudcore's log.
api_ready=""
for _ in $(seq 100); do
  if curl -fsS --max-time 2 --cacert "$DEMO/cloud/pki/ca.crt" "https://127.0.0.1:$API/readyz" >/dev/null 2>&1; then
    api_ready=yes; break
  fi
  kill -0 "$(cat "$DEMO/cloudcore.pid")" 2>/dev/null || break
  sleep 0.2
done
if [ -z "$api_ready" ]; then
  echo "the API at https://127.0.0.1:$API did not become ready (cloudcore.log follows):"
  tail -20 "$DEMO/cloudcore.log"; exit 1
fi
"$BIN/cloudcore" --data-dir "$DEMO/cloud" kubeconfig --user admin --server "https://127.0.0.1:$API" \
  --out "$DEMO/kubeconfig"
KUBECTL=(kubectl --kubeconfig "$DEMO/kubeconfig")
if ! "${KUBECTL[@]}" get --raw /readyz </dev/null >/dev/null; then
  echo "the API refuses the admin kubeconfig $DEMO/kubeconfig (cloudcore.log follows):"
  tail -20 "$DEMO/cloudcore.log"; exit 1
fi

if [ ! -f "$DEMO/edge/pki/report.key" ]; then
  # A token made for demo-edge also re-joins it when an older demo left it registered.
  read -r TOKEN HASH < <("$BIN/cloudcore" --data-dir "$DEMO/cloud" token create --ttl 10m --node demo-edge | awk '/^token:/{t=$2} /^ca-hash:/{h=$2} END{print t, h}')
  "$BIN/edgecore" --data-dir "$DEMO/edge" join --server "127.0.0.1:$HUB" --token "$TOKEN" --ca-hash "$HASH" \
    --node-name demo-edge --mqtt-url "mqtts://127.0.0.1:$MQTT"
fi
# Labels that steer workloads are the admin's (a node may not give itself one at join);
# hello-pod.yaml selects site=demo.
"${KUBECTL[@]}" label node demo-edge site=demo --overwrite >/dev/null
"$BIN/edgecore" --data-dir "$DEMO/edge" run --node-ip 127.0.0.1 \
  --runtime cri --cri-socket "$CTRD/containerd.sock" \
  --cni-conf-dir "$CTRD/cni" --cni-network "$NETWORK" --cni-bridge "$BRIDGE" \
  --proxy-table "$PROXY_TABLE" --dns-interface "$DNS_IFACE" >"$DEMO/edgecore.log" 2>&1 &
echo $! >"$DEMO/edgecore.pid"
sleep 1
if ! kill -0 "$(cat "$DEMO/edgecore.pid")" 2>/dev/null; then
  echo "edgecore did not start:"; tail -5 "$DEMO/edgecore.log"; exit 1
fi

"${KUBECTL[@]}" get pod hello >/dev/null 2>&1 || "${KUBECTL[@]}" create -f deploy/examples/hello-pod.yaml
# Wait until its container runs and is ready.
ready=""
for _ in $(seq 300); do
  ready="$("${KUBECTL[@]}" get pod hello -o jsonpath='{.status.containerStatuses[0].ready}' 2>/dev/null || true)"
  [ "$ready" = "true" ] && break
  sleep 0.2
done
"${KUBECTL[@]}" get pods -o wide
echo "node demo-edge's pod CIDR: $("${KUBECTL[@]}" get node demo-edge -o jsonpath='{.spec.podCIDR}')"
if [ "$ready" != "true" ]; then
  echo "the sample pod did not become ready; see $DEMO/edgecore.log and $DEMO/containerd.log"; exit 1
fi
cat <<TXT

Skerry is running: cloudcore (API https://127.0.0.1:$API, hub udp/$HUB, MQTT over TLS $MQTT), containerd
($CTRD/containerd.sock) and edgecore "demo-edge"; the pod "hello" runs in a busybox container.
See the pod:    kubectl --kubeconfig $DEMO/kubeconfig get pods -o wide
Its log:        $BIN/edgecore --data-dir $DEMO/edge logs hello --runtime cri --cri-socket $CTRD/containerd.sock
Admin access:   $BIN/cloudcore --data-dir $DEMO/cloud kubeconfig --user admin --server https://127.0.0.1:$API
Logs:           $DEMO/cloudcore.log  $DEMO/edgecore.log  $DEMO/containerd.log
Stop:           deploy/quickstart.sh stop
TXT
