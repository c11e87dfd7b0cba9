#!/usr/bin/env bash
# Memory of a mutebridge ingest under a flood of unfinished request heads:
# start `BIN ingest` (embedded Kafka), open CONNS connections that each send
# HEAD_KB KiB of header lines and never finish the head, hold them 3 s, and
# print the server's VmHWM (peak) and VmRSS from /proc, with how many of the
# connections the server had closed by then.
#
#   benches/head_memory.sh BIN [CONNS] [HEAD_KB]     (defaults: 400 400)
set -eu
BIN=$1
CONNS=${2:-400}
HEAD_KB=${3:-400}
PORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
CFG=$(mktemp --suffix=.toml)
printf '[http]\nlisten = "127.0.0.1:%s"\n[[easemob.apps]]\nappkey = "demo#mutebridge"\nsecrets = ["demo-secret"]\n' "$PORT" > "$CFG"
"$BIN" ingest --config "$CFG" >/dev/null 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; rm -f "$CFG"' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.2; done
mem() { awk -v k="$1" '$1==k":" {print $2/1024}' "/proc/$PID/status"; }
BEFORE=$(mem VmRSS)
python3 - "$PORT" "$CONNS" "$HEAD_KB" "$PID" "$BEFORE" <<'PY'
import socket, sys, time
port, conns, head_kb, pid, before = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
line = b"x-filler: " + b"a" * 1012 + b"\r\n"          # 1 KiB per header line
socks, closed = [], 0
for _ in range(conns):
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(0.5)
    try:
        s.sendall(b"POST /webhooks/easemob HTTP/1.1\r\nhost: x\r\n")
        for _ in range(head_kb):
            s.sendall(line)                             # never the blank line
    except OSError:                                     # answered 431 and closed, or full
        closed += 1
    socks.append(s)
time.sleep(3)
status = dict(l.split(":", 1) for l in open(f"/proc/{pid}/status"))
kib = lambda k: int(status[k].split()[0]) / 1024
print(f"connections {conns} x {head_kb} KiB unfinished heads: VmRSS before {before:.1f} MiB, "
      f"after {kib('VmRSS'):.1f} MiB, VmHWM {kib('VmHWM'):.1f} MiB; "
      f"{closed} sends refused by the server")
PY
