#!/usr/bin/env bash
# Flower's deployment runtime on one machine: a SuperLink and two SuperNodes on 127.0.0.1 (insecure: loopback
# only), `flwr run` of this app against them, the final checksums and metrics, then every process is shut down.
# The same processes on separate machines are a real federation: see docs/flower.md.
#
#   recipes/flower_app/run_local_deployment.sh                 # tiny model + tiny data built on the fly
#   MODEL=smollm2 recipes/flower_app/run_local_deployment.sh   # SmolLM2-135M + LoRA on VADER (after prepare-assets)
#   MODE=simulation recipes/flower_app/run_local_deployment.sh # the same app on Flower's simulation engine (Ray):
#                                                              # a SuperLink with --simulation and no SuperNodes
#
# Afterwards it replays the server's saved log onto fresh initial weights and runs the accelerate simulator with the
# same run config: all three checksums must agree (the seed+scalar protocol moves no weights).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
BIN="${FLOWER_BIN:-$ROOT/.venv-flower/bin}"  # the venv with 'hf-fedzo[flower]' (make test-flower builds it)
PORT="${SUPERLINK_PORT:-9092}"  # flwr 1.41 serves the Fleet and Control APIs on one HTTP port
WORK="$(mktemp -d "${TMPDIR:-/tmp}/hf_fedzo_flower.XXXXXX")"
# The SuperLink and SuperNodes start flower-superexec, flwr-serverapp and flwr-clientapp from PATH.
export PATH="$BIN:$PATH" FLWR_HOME="$WORK/flwr-home" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=1 FLWR_DISABLE_UPDATE_CHECK=1
PIDS=()

shutdown() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    # Each SuperLink/SuperNode detached a flower-superexec that exits once it sees its parent gone: wait for it.
    for _ in $(seq 30); do
        pgrep -f -- "--parent-pid ($(IFS='|'; echo "${PIDS[*]}"))\$" >/dev/null || break
        sleep 0.5
    done
    echo "== stopped SuperLink, SuperNodes and their SuperExecs (logs in $WORK)"
}
trap shutdown EXIT

if [[ "${MODEL:-tiny}" == "tiny" ]]; then
    "$BIN/python" "$HERE/make_tiny_assets.py" "$WORK/assets" >/dev/null 2>&1
    RUN_CONFIG="model-path='$WORK/assets/model' train-file='$WORK/assets/train.csv' \
validation-file='$WORK/assets/validation.csv' batch-size=4 zo-p2=2 rounds=3 eval-samples=8"
else
    RUN_CONFIG="model-path='$MODEL' max-train-samples=64 eval-samples=32 batch-size=4 rounds=2"
fi
RUN_CONFIG="$RUN_CONFIG num-clients=2 clients-per-round=2 output-dir='$WORK/out' round-timeout=300.0 wait-for-nodes=120.0"

mkdir -p "$FLWR_HOME"
cat > "$FLWR_HOME/config.toml" <<EOF
[superlink]
default = "local-deployment"

[superlink.local-deployment]
address = "127.0.0.1:$PORT"
insecure = true
EOF

MODE="${MODE:-deployment}"
FEDERATION=()
SIMULATION=()
if [[ "$MODE" == "simulation" ]]; then
    SIMULATION=(--simulation)
    # One Ray actor with one CPU runs the clients in turn (a two-core machine).
    FEDERATION=(--federation-config "num-supernodes=2 init-args-num-cpus=1 client-resources-num-cpus=1")
fi
echo "== SuperLink on 127.0.0.1:$PORT ($MODE)"
# The apps run in this venv: no per-run environment built by Flower (hf-fedzo is not on a registry).
"$BIN/flower-superlink" --insecure --host 127.0.0.1 --port "$PORT" --database "$WORK/superlink.db" \
    --disable-runtime-dependency-installation "${SIMULATION[@]}" >"$WORK/superlink.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 60); do
    kill -0 "${PIDS[0]}" 2>/dev/null || { tail -n 20 "$WORK/superlink.log" >&2; exit 1; }
    "$BIN/python" -c "import httpx; httpx.get('http://127.0.0.1:$PORT/health', timeout=1).raise_for_status()" \
        2>/dev/null && break
    sleep 1
done

[[ "$MODE" == "simulation" ]] || for k in 0 1; do
    echo "== SuperNode $k (partition-id=$k num-partitions=2, runtime API on 127.0.0.1:$((9094 + k)))"
    "$BIN/flower-supernode" --insecure --superlink "127.0.0.1:$PORT" --port "$((9094 + k))" \
        --node-config "partition-id=$k num-partitions=2" >"$WORK/supernode-$k.log" 2>&1 &
    PIDS+=($!)
done

echo "== flwr run $HERE local-deployment"
started=$(date +%s)
(cd "$HERE" && "$BIN/flwr" run . local-deployment --stream --run-config "$RUN_CONFIG" "${FEDERATION[@]}") >"$WORK/flwr-run.log" 2>&1 || true
grep -E "Successfully started run|clients on nodes|round [0-9]+:|final:|ERROR|Error" "$WORK/flwr-run.log" || true
echo "== flwr run finished in $(( $(date +%s) - started )) s"

if [[ ! -f "$WORK/out/final.json" ]]; then
    echo "no final.json: the run failed; log tails:" >&2
    tail -n 60 "$WORK/flwr-run.log" "$WORK/superlink.log" "$WORK"/supernode-*.log >&2
    exit 1
fi
echo "== final.json"
cat "$WORK/out/final.json"
echo "== replaying the saved log and running the accelerate simulator with the same run config"
TRANSFORMERS_VERBOSITY=error TQDM_DISABLE=1 "$BIN/python" -W ignore::FutureWarning "$HERE/check_against_simulator.py" "$WORK/out" --run-config "$RUN_CONFIG"
