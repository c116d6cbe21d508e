#!/usr/bin/env bash
# Cost per proxied request as a count rather than a time: user-space instructions (Ir) under
# valgrind's callgrind, nginx (the reference config of `loadtest compare`) and rw-proxy in front
# of the same tiny backend, plus wrk's req/s and p99 of both measured in the same run. On a
# shared machine wall-clock numbers move from one run to the next; the instruction count does
# not, so a performance change is judged by it.
#
#   loadtest/bench/instructions.sh [OUT_DIR]        default OUT_DIR: bench-results/<UTC>-instructions
#
#   RW_PROXY=path     binary to measure (default target/release/rw-proxy of this checkout)
#   COMMIT=label      what to call it in the results (default: HEAD of the checkout the binary
#                     is in, and the last commit that changed rw-proxy's sources)
#   N=20000           counted requests per method and proxy (h2load --h1 -n N -c CONNS)
#   CONNS=16          h2load connections
#   WARMUP=3000       uncounted requests before each count
#   WRK_DURATION=5s WRK_ROUNDS=3 WRK_CONNS=64 WRK_THREADS=2    the wrk part (GET)
#   TIME_LIMIT=1800   seconds; the whole run is stopped after that
#   NGINX_TEMPLATE=path   another nginx config in the form of loadtest/bench/nginx-reference.conf
#                     (to see what a config change costs nginx)
#
# Both proxies run as one process on one thread (nginx `master_process off; worker_processes 1`,
# rw-proxy `threads: 1`), the same for the wrk part, so its req/s ratio compares the work per
# request on one core. Traffic goes only to 127.0.0.1. Every process started here is stopped on
# exit, on error and on Ctrl-C.
#
# What a count contains: each h2load run opens CONNS new client connections, so accepting them
# (and closing them at the end) is in the count, for both proxies alike. The warm-up leaves both
# with their upstream keep-alive pools filled, so the counted requests reuse pooled upstream
# connections; the backend never closes them (keepalive_requests is raised). All threads of the
# proxy process are counted (callgrind adds them up), idle background work included.
set -euo pipefail
caller="$PWD"
cd "$(dirname "$0")/../.."
# Paths given by the caller are relative to where it was called from.
abs() { case "$1" in /*) echo "$1" ;; *) echo "$caller/$1" ;; esac; }

N="${N:-20000}"
CONNS="${CONNS:-16}"
WARMUP="${WARMUP:-3000}"
WRK_DURATION="${WRK_DURATION:-5s}"
WRK_ROUNDS="${WRK_ROUNDS:-3}"
WRK_CONNS="${WRK_CONNS:-64}"
WRK_THREADS="${WRK_THREADS:-2}"
TIME_LIMIT="${TIME_LIMIT:-1800}"
if [ -n "${RW_PROXY:-}" ]; then
  RW_PROXY="$(abs "$RW_PROXY")"
else
  RW_PROXY="$PWD/target/release/rw-proxy"
fi
if [ -n "${1:-}" ]; then
  out="$(abs "$1")"
else
  out="bench-results/$(date -u +%Y%m%dT%H%M%SZ)-instructions"
fi
if [ -z "${COMMIT:-}" ]; then
  # The checkout the binary sits in (its target/release). HEAD may be a benchmark-only commit:
  # name the last one that changed what rw-proxy is built from, and say so when the checkout
  # has changes to it that are not committed.
  repo="$(dirname "$RW_PROXY")"
  srcs=(proxy writer-election Cargo.toml Cargo.lock)
  top="$(git -C "$repo" rev-parse --show-toplevel 2>/dev/null || true)"
  if [ -n "$top" ]; then
    COMMIT="$(git -C "$top" rev-parse --short HEAD) (rw-proxy sources as of $(git -C "$top" log -1 --format=%h -- "${srcs[@]}")"
    [ -z "$(git -C "$top" status --porcelain --untracked-files=no -- "${srcs[@]}")" ] || COMMIT="$COMMIT, plus uncommitted changes"
    COMMIT="$COMMIT)"
  else
    COMMIT="unknown (set COMMIT=)"
  fi
fi

missing=()
for tool in valgrind callgrind_control callgrind_annotate h2load nginx wrk curl python3; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "instructions.sh: missing ${missing[*]}." >&2
  echo "  scripts/bootstrap.sh --bench installs valgrind, h2load (nghttp2-client), nginx, wrk" >&2
  echo "  and curl; python3 is the Debian package python3." >&2
  exit 2
fi
if [ ! -x "$RW_PROXY" ]; then
  echo "instructions.sh: $RW_PROXY not found: build it first with cargo build --release --bins," >&2
  echo "  or name the binary to measure with RW_PROXY=path." >&2
  exit 2
fi
if [ -n "${NGINX_TEMPLATE:-}" ]; then
  template="$(abs "$NGINX_TEMPLATE")"
else
  template="$PWD/loadtest/bench/nginx-reference.conf"
fi

mkdir -p "$out"
out="$(cd "$out" && pwd)"
tmp="$(mktemp -d /tmp/instructions.XXXXXX)"
pids=()
watchdog=""

# Forgets PID: once bash has reaped a child, its number may belong to someone else.
forget() {
  local keep=() q
  for q in "${pids[@]}"; do
    [ "$q" = "$1" ] || keep+=("$q")
  done
  pids=("${keep[@]}")
}

stop_pid() {
  local pid="$1" i
  forget "$pid"
  # Only a process that is still a child of this script.
  [ "$(ps -o ppid= -p "$pid" 2>/dev/null | tr -d ' ')" = "$$" ] || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for i in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local pid
  for pid in "${pids[@]}"; do
    stop_pid "$pid"
  done
  [ -n "$watchdog" ] && stop_pid "$watchdog"
  rm -rf "$tmp"
  exit "$rc"
}
# A trap runs with the redirections of the command it interrupted (an h2load log): fd 3 is the
# script's own stderr.
exec 3>&2
trap cleanup EXIT
trap 'echo "instructions.sh: interrupted" >&3; exit 130' INT
trap 'echo "instructions.sh: stopped (SIGTERM or TIME_LIMIT=${TIME_LIMIT}s)" >&3; exit 143' TERM

# Stops the whole run when it takes longer than TIME_LIMIT (a proxy that hangs under valgrind).
(
  trap 'kill "$sp" 2>/dev/null; exit 0' TERM
  sleep "$TIME_LIMIT" &
  sp=$!
  wait "$sp"
  kill -TERM $$
) &
watchdog=$!

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits until URL answers (any HTTP status) or PID is gone; bounded.
wait_http() {
  local name="$1" url="$2" pid="$3" log="$4" i
  for i in $(seq 1 600); do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "instructions.sh: $name exited at start:" >&2
      tail -20 "$log" >&2
      exit 1
    fi
    curl -s -o /dev/null --max-time 2 "$url" && return 0
    sleep 0.2
  done
  echo "instructions.sh: $name did not answer $url within 120 s:" >&2
  tail -20 "$log" >&2
  exit 1
}

# Runs a command to its end. In the background plus wait rather than in the foreground,
# because bash runs a trap (Ctrl-C, TIME_LIMIT) only after the foreground command has finished.
run() {
  "$@" &
  local p=$! rc=0
  pids+=("$p")
  wait "$p" || rc=$?
  forget "$p"
  return "$rc"
}

# Starts a command in the background, remembering its pid for cleanup; sets $started.
start() {
  local log="$1"
  shift
  "$@" >"$log" 2>&1 </dev/null &
  started=$!
  pids+=("$started")
}

# nginx.conf of the reference proxy, from the template `loadtest compare` uses too.
nginx_proxy_conf() {
  local dir="$1" listen="$2" t
  t="$(cat "$template")"
  t="${t//@MASTER_PROCESS@/off}"
  t="${t//@WORKER_PROCESSES@/1}"
  t="${t//@RLIMIT_NOFILE@/8192}"
  t="${t//@WORKER_CONNECTIONS@/4096}"
  t="${t//@DIR@/$dir}"
  t="${t//@WRITER@/$writer}"
  t="${t//@READERS@/    server $reader;}"
  t="${t//@LISTEN@/$listen}"
  printf '%s\n' "$t" >"$dir/nginx.conf"
}

rw_proxy_conf() {
  local dir="$1" listen="$2" admin="$3"
  cat >"$dir/proxy.yaml" <<EOF
listen: "127.0.0.1:$listen"
admin_listen: "127.0.0.1:$admin"
threads: 1
access_log: "off"
topology:
  static:
    writer: { name: backend-writer, address: "$writer" }
    readers:
      - { name: backend-reader, address: "$reader" }
EOF
}

# The backend: answers every request with 200 and a short body; never closes a keep-alive
# connection, so neither proxy reconnects upstream during a count. One process on two ports,
# one for the writer and one for the reader, because rw-proxy refuses a topology that names
# one address twice.
writer="127.0.0.1:$(free_port)"
reader="127.0.0.1:$(free_port)"
mkdir -p "$tmp/backend"
cat >"$tmp/backend/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $tmp/backend/nginx.pid;
error_log $tmp/backend/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $tmp/backend/body;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  server {
    listen $writer;
    listen $reader;
    location / { return 200 "ok\n"; }
  }
}
EOF
start "$tmp/backend/stdout.log" nginx -p "$tmp/backend" -c "$tmp/backend/nginx.conf" -e "$tmp/backend/error.log"
wait_http backend "http://$reader/" "$started" "$tmp/backend/error.log"

head -c 100 /dev/zero | tr '\0' v >"$tmp/body"

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $COMMIT"
  echo "rw-proxy: $RW_PROXY (built $(date -u -r "$RW_PROXY" +%Y-%m-%dT%H:%M:%SZ))"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
  echo "cores: $(nproc)"
  echo "kernel: $(uname -r)"
  echo "nginx: $(nginx -v 2>&1)"
  echo "valgrind: $(valgrind --version)"
  echo "h2load: $(h2load --version 2>&1 | head -1)"
  echo "wrk: $(wrk --version 2>&1 | head -1)"
  echo "nginx config: $template"
  echo "command: N=$N CONNS=$CONNS WARMUP=$WARMUP WRK_DURATION=$WRK_DURATION WRK_ROUNDS=$WRK_ROUNDS WRK_CONNS=$WRK_CONNS WRK_THREADS=$WRK_THREADS loadtest/bench/instructions.sh"
} >"$out/machine.txt"
cat "$out/machine.txt" >&2

# h2load for METHOD: COUNT requests over CONNS connections; fails unless every one got a 2xx.
h2load_run() {
  local url="$1" method="$2" count="$3" log="$4"
  local args=(--h1 -n "$count" -c "$CONNS")
  [ "$method" = PUT ] && args+=(-d "$tmp/body" -H ":method: PUT")
  run timeout 900 h2load "${args[@]}" "$url/kv/k1" >"$log" 2>&1 || {
    echo "instructions.sh: h2load failed:" >&2
    tail -5 "$log" >&2
    exit 1
  }
  if ! grep -q "status codes: $count 2xx" "$log"; then
    echo "instructions.sh: not every request got a 2xx ($log):" >&2
    grep -E '^(requests|status codes):' "$log" >&2
    exit 1
  fi
}

# callgrind_control, quiet unless it fails.
cg_control() {
  callgrind_control "$1" "$2" >"$3/callgrind_control.log" 2>&1 || {
    echo "instructions.sh: callgrind_control $1 $2 failed:" >&2
    cat "$3/callgrind_control.log" >&2
    exit 1
  }
}

# Counts one proxy under callgrind: NAME, the command line, the URL it serves, its readiness URL.
count() {
  local name="$1" url="$2" ready="$3"
  shift 3
  local dir="$tmp/$name" pid dumps=0 method
  echo "== $name under callgrind" >&2
  start "$dir/valgrind.log" valgrind --tool=callgrind --dump-instr=no \
    --callgrind-out-file="$dir/callgrind.out" "$@"
  pid=$started
  wait_http "$name" "$ready" "$pid" "$dir/valgrind.log"
  for method in GET PUT; do
    echo "   $method: $WARMUP warm-up requests, then $N counted" >&2
    h2load_run "$url" "$method" "$WARMUP" "$dir/warmup-$method.txt"
    cg_control -z "$pid" "$dir"
    h2load_run "$url" "$method" "$N" "$out/h2load-$name-$method.txt"
    cg_control -d "$pid" "$dir"
    dumps=$((dumps + 1))
    local f="$dir/callgrind.out.$dumps" i
    for i in $(seq 1 100); do
      [ -s "$f" ] && grep -q '^totals:' "$f" && break
      sleep 0.1
    done
    cp "$f" "$out/callgrind.out.$name-$method"
    local ir
    ir="$(awk '/^summary:/ {print $2}' "$f")"
    echo -e "$name\t$method\t$ir\t$N" >>"$out/counts.tsv"
    callgrind_annotate --inclusive=no --threshold=95 "$f" >"$out/annotate-$name-$method.txt" 2>/dev/null || true
    callgrind_annotate --inclusive=yes --threshold=99 "$f" >"$out/annotate-$name-$method-inclusive.txt" 2>/dev/null || true
    python3 loadtest/bench/by-crate.py "$f" "$N" >"$out/by-crate-$name-$method.txt"
    echo "   $method: $ir Ir / $N requests = $((ir / N)) Ir/request" >&2
  done
  stop_pid "$pid"
}

: >"$out/counts.tsv"

nginx_port="$(free_port)"
mkdir -p "$tmp/nginx"
nginx_proxy_conf "$tmp/nginx" "$nginx_port"
cp "$tmp/nginx/nginx.conf" "$out/nginx.conf"
count nginx "http://127.0.0.1:$nginx_port" "http://127.0.0.1:$nginx_port/" \
  nginx -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf" -e "$tmp/nginx/nginx-error.log"

rw_port="$(free_port)"
rw_admin="$(free_port)"
mkdir -p "$tmp/rw-proxy"
rw_proxy_conf "$tmp/rw-proxy" "$rw_port" "$rw_admin"
cp "$tmp/rw-proxy/proxy.yaml" "$out/proxy.yaml"
count rw-proxy "http://127.0.0.1:$rw_port" "http://127.0.0.1:$rw_admin/health/ready" \
  "$RW_PROXY" --config "$tmp/rw-proxy/proxy.yaml"

# wrk: both proxies without valgrind, same configs, GET, rounds alternating (order flips).
echo "== wrk -t$WRK_THREADS -c$WRK_CONNS GET, $WRK_ROUNDS rounds of $WRK_DURATION" >&2
nginx_port="$(free_port)"
mkdir -p "$tmp/nginx-wrk"
nginx_proxy_conf "$tmp/nginx-wrk" "$nginx_port"
start "$tmp/nginx-wrk/stdout.log" nginx -p "$tmp/nginx-wrk" -c "$tmp/nginx-wrk/nginx.conf" \
  -e "$tmp/nginx-wrk/nginx-error.log"
wait_http nginx "http://127.0.0.1:$nginx_port/" "$started" "$tmp/nginx-wrk/nginx-error.log"
rw_port="$(free_port)"
rw_admin="$(free_port)"
mkdir -p "$tmp/rw-proxy-wrk"
rw_proxy_conf "$tmp/rw-proxy-wrk" "$rw_port" "$rw_admin"
start "$tmp/rw-proxy-wrk/rw-proxy.log" "$RW_PROXY" --config "$tmp/rw-proxy-wrk/proxy.yaml"
wait_http rw-proxy "http://127.0.0.1:$rw_admin/health/ready" "$started" "$tmp/rw-proxy-wrk/rw-proxy.log"

: >"$out/wrk.tsv"
for round in $(seq 1 "$WRK_ROUNDS"); do
  order=(nginx rw-proxy)
  [ $((round % 2)) -eq 0 ] && order=(rw-proxy nginx)
  for name in "${order[@]}"; do
    port="$nginx_port"
    [ "$name" = rw-proxy ] && port="$rw_port"
    url="http://127.0.0.1:$port/kv/k1"
    run timeout 60 wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d1s "$url" >/dev/null
    log="$out/wrk-$name-$round.txt"
    run timeout 600 wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"$WRK_DURATION" --latency "$url" >"$log"
    echo -e "$name\t$round\t$log" >>"$out/wrk.tsv"
    echo "   round $round $name: $(grep 'Requests/sec' "$log")" >&2
  done
done

python3 - "$out" <<'EOF'
import json, os, re, statistics, sys

out = sys.argv[1]
machine = dict(l.rstrip("\n").split(": ", 1) for l in open(os.path.join(out, "machine.txt")) if ": " in l)

ir = {}
for line in open(os.path.join(out, "counts.tsv")):
    name, method, total, n = line.split()
    ir[(name, method)] = {"ir_total": int(total), "requests": int(n), "ir_per_request": int(total) / int(n)}

def us(v, unit):
    return float(v) * {"us": 1, "ms": 1e3, "s": 1e6}[unit]

wrk = {}
for line in open(os.path.join(out, "wrk.tsv")):
    name, rnd, log = line.rstrip("\n").split("\t")
    text = open(log).read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text)[1])
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\b", text, re.M)
    errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", text))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    wrk.setdefault(name, []).append({
        "round": int(rnd), "requests_per_s": rps, "p99_us": us(*p99.groups()),
        "errors": errors + (int(non2xx[1]) if non2xx else 0),
    })

def med(name, key):
    return statistics.median(r[key] for r in wrk[name])

result = {
    "machine": machine,
    "instructions": [
        {"proxy": name, "method": method, **v} for (name, method), v in sorted(ir.items())
    ],
    "ratios": {},
    "wrk": {name: {"rounds": rounds, "median_requests_per_s": med(name, "requests_per_s"),
                   "median_p99_us": med(name, "p99_us")} for name, rounds in wrk.items()},
}
rows = []
for method in ("GET", "PUT"):
    n, r = ir.get(("nginx", method)), ir.get(("rw-proxy", method))
    if n and r:
        ratio = r["ir_per_request"] / n["ir_per_request"]
        result["ratios"][f"ir_per_request_{method}"] = round(ratio, 3)
        rows.append((f"Ir/request {method}", f"{n['ir_per_request'] / 1000:.1f}k",
                     f"{r['ir_per_request'] / 1000:.1f}k", f"{ratio:.2f}x"))
if "nginx" in wrk and "rw-proxy" in wrk:
    n_rps, r_rps = med("nginx", "requests_per_s"), med("rw-proxy", "requests_per_s")
    n_p99, r_p99 = med("nginx", "p99_us"), med("rw-proxy", "p99_us")
    result["ratios"]["wrk_requests_per_s"] = round(r_rps / n_rps, 3)
    result["ratios"]["wrk_p99"] = round(r_p99 / n_p99, 3)
    rows.append(("wrk GET req/s (median)", f"{n_rps:.0f}", f"{r_rps:.0f}", f"{r_rps / n_rps:.2f}x"))
    rows.append(("wrk GET p99 (median)", f"{n_p99 / 1000:.2f} ms", f"{r_p99 / 1000:.2f} ms", f"{r_p99 / n_p99:.2f}x"))
    errs = {k: sum(r["errors"] for r in v) for k, v in wrk.items()}
    rows.append(("wrk errors", str(errs["nginx"]), str(errs["rw-proxy"]), ""))

table = "| | nginx | rw-proxy | rw-proxy / nginx |\n|---|---:|---:|---:|\n"
table += "".join(f"| {a} | {b} | {c} | {d} |\n" for a, b, c, d in rows)
head = f"commit {machine.get('commit')}, {machine.get('date')}\n\n"
open(os.path.join(out, "table.md"), "w").write(head + table)
json.dump(result, open(os.path.join(out, "result.json"), "w"), indent=2)
print(head + table, end="")
EOF
echo "results in $out" >&2
