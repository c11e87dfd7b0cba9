#!/usr/bin/env bash
# CPU time a mutebridge server spends per callback: start `BIN run` (ingest
# and worker, embedded Kafka, no policy) and drive it for 10 s with the
# load generator of LOADGEN (the same for every build compared, so only the
# server differs); read the server's utime+stime from /proc before and
# after. Less sensitive than req/s to how the 2 cores are split between
# load generator and server.
#
# ROLE=ingest BROKERS=host:port measures the ingest role alone, against a
# cluster in another process (`mutebridge dev-kafka`), so neither the broker
# nor a worker is counted: the figure the README's Sizing uses.
#
#   benches/cpu_per_callback.sh BIN LABEL [LOADGEN]
#   e.g. for i in 1 2 3 4; do benches/cpu_per_callback.sh old/mutebridge old; \
#        benches/cpu_per_callback.sh target/release/mutebridge new old/mutebridge; done
set -eu
BIN=$1
LABEL=$2
LOADGEN=${3:-$BIN}
ROLE=${ROLE:-run}
BROKERS=${BROKERS:-embedded}
PORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
CFG=$(mktemp --suffix=.toml)
printf '[http]\nlisten = "127.0.0.1:%s"\n[kafka]\nbrokers = "%s"\ncreate_topics = false\n[[easemob.apps]]\nappkey = "demo#mutebridge"\nsecrets = ["demo-secret"]\n' "$PORT" "$BROKERS" > "$CFG"
"$BIN" "$ROLE" --config "$CFG" >/dev/null 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; rm -f "$CFG"' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.2; done
ticks() { awk '{print $14+$15}' "/proc/$PID/stat"; }
T0=$(ticks)
OUT=$("$LOADGEN" bench ingest --url "http://127.0.0.1:$PORT/webhooks/easemob" --runs 1 --duration 10 --warmup 0 | grep "run 1")
T1=$(ticks)
RPS=$(echo "$OUT" | awk '{print $3}')
HZ=$(getconf CLK_TCK)
python3 -c "t=($T1-$T0)/$HZ; n=$RPS*10; print('$LABEL', 'req/s', $RPS, 'server_cpu_s', round(t,2), 'cpu_us_per_callback', round(t/n*1e6,1))"
