#!/usr/bin/env bash
# Colocated vs disaggregated over HTTP on a CPU, with each role pinned to its own cores.
#
#   OUT=/tmp/disagg-http bash tools/disagg_vs_colocated_http.sh
#
# On XLA:CPU all host "devices" of one process share one intra-op thread pool, so in-process
# meshes cannot keep a prefill GEMM off the cores a decode step needs. Separate processes pinned
# with taskset can: colocated gets cores $COLOCATED_CPUS (all), disaggregated runs a prefill
# worker on $PREFILL_CPUS and a decode worker on $DECODE_CPUS (KV pages through JAX's transfer
# server), with the router beside them. Both face the same mixed load, two bench_serving clients
# at once: short chats (Poisson, $CHAT_RATE/s) while long prompts keep arriving ($LONG_RATE/s).
set -euo pipefail
OUT=${OUT:-/tmp/disagg-http}; CONFIG=${CONFIG:-configs/smollm2-135m.yaml}
COLOCATED_CPUS=${COLOCATED_CPUS:-0,1}; PREFILL_CPUS=${PREFILL_CPUS:-0}; DECODE_CPUS=${DECODE_CPUS:-1}
CHAT_RATE=${CHAT_RATE:-1.0}; CHAT_PROMPTS=${CHAT_PROMPTS:-60}
LONG_RATE=${LONG_RATE:-0.2}; LONG_PROMPTS=${LONG_PROMPTS:-12}
SLO="--slo-ttft ${SLO_TTFT:-5} --slo-tpot ${SLO_TPOT:-0.25}"
mkdir -p "$OUT"
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true' EXIT

wait_ready() {
  for _ in $(seq 1 1800); do curl -sf "$1/health" > /dev/null && return 0; sleep 1; done
  echo "server at $1 never became ready" >&2; return 1
}

load() {   # $1: base URL, $2: mode name
  echo "== $2 ($(date -u +%H:%M:%S))"
  python tools/bench_serving.py --base-url "$1" --num-prompts "$CHAT_PROMPTS" --input-len 32 \
    --output-len 64 --request-rate "$CHAT_RATE" --seed 1 $SLO --out "$OUT/$2-chat.json" \
    --plot "$OUT/$2-chat.png" > "$OUT/$2-chat.txt" &
  local chat=$!
  python tools/bench_serving.py --base-url "$1" --num-prompts "$LONG_PROMPTS" --input-len 1024 \
    --output-len 8 --request-rate "$LONG_RATE" --seed 2 $SLO --out "$OUT/$2-long.json" \
    > "$OUT/$2-long.txt"
  wait $chat
  tail -n 12 "$OUT/$2-chat.txt" "$OUT/$2-long.txt"
}

taskset -c "$COLOCATED_CPUS" jaxserve serve --config "$CONFIG" --port 8300 > "$OUT/colocated.log" 2>&1 &
PIDS+=($!)
wait_ready http://127.0.0.1:8300
load http://127.0.0.1:8300 colocated
kill "${PIDS[@]}"; wait "${PIDS[@]}" 2>/dev/null || true; PIDS=()

taskset -c "$PREFILL_CPUS" jaxserve serve --role prefill --config "$CONFIG" --port 8100 > "$OUT/prefill.log" 2>&1 &
PIDS+=($!)
taskset -c "$DECODE_CPUS" jaxserve serve --role decode --config "$CONFIG" --port 8200 > "$OUT/decode.log" 2>&1 &
PIDS+=($!)
wait_ready http://127.0.0.1:8100; wait_ready http://127.0.0.1:8200
jaxserve serve --role router --config "$CONFIG" --port 8000 --prefill-url http://127.0.0.1:8100 \
  --decode-url http://127.0.0.1:8200 > "$OUT/router.log" 2>&1 &
PIDS+=($!)
wait_ready http://127.0.0.1:8000
load http://127.0.0.1:8000 disaggregated
