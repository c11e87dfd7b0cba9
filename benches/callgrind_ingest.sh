#!/usr/bin/env bash
# Instructions per callback of the ingest role, counted by callgrind: the
# same for the same binary and input whatever else the machine is doing, so
# two builds can be compared on a busy machine (wall-clock figures cannot).
#
# Starts `mutebridge dev-kafka` (not counted), then `BIN ingest` under
# callgrind with instrumentation off; sends WARMUP signed callbacks, turns
# it on, sends N more on CONNS keep-alive connections, turns it off
# and prints the instructions counted divided by N (all threads: hyper,
# verification, serialisation, librdkafka's producer threads).
#
#   benches/callgrind_ingest.sh BIN [N] [CONNS]      (defaults: 2000 8)
# SERVER=floor counts the bench's floor proxy (`BIN bench floor-server`)
# instead. The callgrind output (for callgrind_annotate) is left in OUT.1
# (OUT defaults to /tmp/callgrind.ingest.out).
set -eu
BIN=$1
N=${2:-2000}
CONNS=${3:-8}
WARMUP=${WARMUP:-300}
OUT=${OUT:-/tmp/callgrind.ingest.out}
KLOG=$(mktemp)
"$BIN" dev-kafka > "$KLOG" 2>/dev/null &
KPID=$!
CFG=$(mktemp --suffix=.toml)
trap 'kill $KPID $PID 2>/dev/null; rm -f "$CFG" "$KLOG"' EXIT
for _ in $(seq 100); do grep -q bootstrap.servers= "$KLOG" && break; sleep 0.1; done
BROKERS=$(sed -n 's/^bootstrap.servers=//p' "$KLOG")
PORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
printf '[http]\nlisten = "127.0.0.1:%s"\n[kafka]\nbrokers = "%s"\ncreate_topics = false\n[[easemob.apps]]\nappkey = "demo#mutebridge"\nsecrets = ["demo-secret"]\n' "$PORT" "$BROKERS" > "$CFG"
rm -f "$OUT"
if [ "${SERVER:-ingest}" = floor ]; then
  ARGS=(bench floor-server --listen "127.0.0.1:$PORT" --brokers "$BROKERS")
  READY=/healthz
else
  ARGS=(ingest --config "$CFG")
  READY=/readyz
fi
RUST_LOG=warn valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT" \
  "$BIN" "${ARGS[@]}" >/dev/null 2>/dev/null &
PID=$!
for _ in $(seq 600); do curl -sf "http://127.0.0.1:$PORT$READY" >/dev/null && break; sleep 0.2; done
load() {
python3 - "$PORT" "$1" "$CONNS" "$2" <<'PY'
import hashlib, http.client, sys, threading, time
port, n, conns, tag = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
ok = [0]
def worker(k):
    c = http.client.HTTPConnection("127.0.0.1", port)
    for i in range(k, n, conns):
        call_id = f"demo#mutebridge_cg-{tag}-{i}"
        ts = str(int(time.time() * 1000))
        sec = hashlib.md5((call_id + "demo-secret" + ts).encode()).hexdigest()
        body = ('{"callId":"%s","security":"%s","payload":{"mute":true,"type":"MUTE"},"appkey":"demo#mutebridge",'
                '"id":"%d","type":"GROUP","event":"group_op_event","operation":"UPDATE","operator":"@ppAdmin","timestamp":%s}'
                % (call_id, sec, 100000000 + i % 1000, ts))
        c.request("POST", "/webhooks/easemob", body, {"content-type": "application/json"})
        r = c.getresponse(); r.read()
        if r.status == 200: ok[0] += 1
threads = [threading.Thread(target=worker, args=(k,)) for k in range(conns)]
[t.start() for t in threads]; [t.join() for t in threads]
if ok[0] != n: sys.exit(f"only {ok[0]} of {n} answered 200")
PY
}
load "$WARMUP" warm
callgrind_control -i on "$PID" >/dev/null
load "$N" run
callgrind_control -i off "$PID" >/dev/null
callgrind_control -d "$PID" >/dev/null
sleep 1
TOTAL=$(callgrind_annotate "$OUT.1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1; exit}')
echo "$(basename "$BIN") ${SERVER:-ingest}: $N callbacks, $TOTAL instructions, $((TOTAL / N)) per callback"
