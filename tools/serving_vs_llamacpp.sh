#!/usr/bin/env bash
# jaxserve and llama.cpp's llama-server, side by side on this machine, measured by the same
# load generator (tools/bench_serving.py) at concurrency 1, 8 and 32 in one run.
#
#   LLAMA_SERVER=/path/to/llama-server GGUF=/path/to/model.gguf OUT=/tmp/serving \
#       bash tools/serving_vs_llamacpp.sh
#
# Each server is idle while the other is measured. llama-server gets 32 slots of 1,024 tokens
# and both cores (-t 2); jaxserve the shipped config. Results: $OUT/{jaxserve,llamacpp}-c{N}.json
# and .png. Override INPUT_LEN, OUTPUT_LEN, CONCURRENCY ("1 8 32"), PROMPTS ("4 16 64").
set -euo pipefail
: "${LLAMA_SERVER:?path to llama-server}" "${GGUF:?path to the GGUF file}"
OUT=${OUT:-/tmp/serving}; INPUT_LEN=${INPUT_LEN:-512}; OUTPUT_LEN=${OUTPUT_LEN:-128}
CONCURRENCY=(${CONCURRENCY:-1 8 32}); PROMPTS=(${PROMPTS:-4 16 64})
CONFIG=${CONFIG:-configs/smollm2-135m.yaml}
# STRUCTURED=both: chat requests, each run unconstrained then with a JSON schema (response_format)
STRUCTURED=${STRUCTURED:-off}
EXTRA=(); [ "$STRUCTURED" != off ] && EXTRA=(--endpoint chat --structured "$STRUCTURED")
mkdir -p "$OUT"

jaxserve serve --config "$CONFIG" --port 8300 > "$OUT/jaxserve.log" 2>&1 &
JAX_PID=$!
"$LLAMA_SERVER" -m "$GGUF" --port 8400 -np 32 -c 32768 -t 2 > "$OUT/llamacpp.log" 2>&1 &
LCPP_PID=$!
trap 'kill $JAX_PID $LCPP_PID 2>/dev/null || true' EXIT

wait_ready() {   # /health answers 200 on both servers once the model is loaded (and warmed up)
  for _ in $(seq 1 1800); do
    curl -sf "$1/health" > /dev/null && return 0; sleep 1
  done
  echo "server at $1 never became ready" >&2; return 1
}
wait_ready http://127.0.0.1:8400
wait_ready http://127.0.0.1:8300

for i in "${!CONCURRENCY[@]}"; do
  c=${CONCURRENCY[$i]}; n=${PROMPTS[$i]}
  for name in jaxserve llamacpp; do
    port=$([ "$name" = jaxserve ] && echo 8300 || echo 8400)
    echo "== $name, concurrency $c, $n prompts ($(date -u +%H:%M:%S), load $(cut -d' ' -f1 /proc/loadavg))"
    python tools/bench_serving.py --base-url "http://127.0.0.1:$port" --num-prompts "$n" \
      --input-len "$INPUT_LEN" --output-len "$OUTPUT_LEN" --concurrency "$c" \
      --warmup-requests 1 "${EXTRA[@]}" --out "$OUT/$name-c$c.json" --plot "$OUT/$name-c$c.png"
  done
done
