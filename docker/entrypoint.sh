#!/bin/sh
# trtserve container entrypoint.
#
#   trtserve-entrypoint prepare   check the config, seed the writable model repository, build missing engines; exit
#   trtserve-entrypoint serve ... prepare, then exec `trtserve serve` (extra arguments go to serve)   [default]
#   trtserve-entrypoint CMD ...   exec `trtserve CMD ...` (doctor, health, build, models, ...)
#
# Engines are specific to the GPU, the TensorRT version and the build flags, so they are built on the device at
# start, into a cache that should outlive the container (a volume, a hostPath or a PVC). `trtserve build` reuses a
# cached engine whose device key matches and rebuilds one that does not; this script logs which of the two happened.
#
# Environment (the images set the defaults that differ between CPU, GPU and Jetson):
#   TRTSERVE_CONFIG             server YAML (default /etc/trtserve/server.yaml when it exists)
#   TRTSERVE_MODEL_REPOSITORY   writable model repository, holds engines/<model>/cache (default /var/lib/trtserve/engines)
#   TRTSERVE_SEED_REPOSITORY    read-only repository baked into the image, copied in at start (default /opt/trtserve/engines)
#   TRTSERVE_MODEL_CONFIG_DIR   optional <model>.yaml files replacing a model's model.yaml (default /etc/trtserve/models)
#   TRTSERVE_BUILD_ENGINES      1: build TensorRT engines at start (GPU and Jetson images); 0: not (CPU image)
#   TRTSERVE_BUILD_ARGS         extra `trtserve build` arguments, e.g. "--max-batch 8 --dla-core 0"
#   TRTSERVE_REQUIRE_GPU        1: without a visible NVIDIA GPU, log why and stay up not ready instead of serving
#   TRTSERVE_PYTHON             the Python that has trtserve installed (default python3)
#   TRTSERVE_STANDBY_LOG_INTERVAL_S  how often a GPU-less container repeats its error (default 300)
set -eu

log() { printf '%s trtserve-entrypoint: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }

CONFIG=${TRTSERVE_CONFIG:-}
if [ -z "$CONFIG" ] && [ -f /etc/trtserve/server.yaml ]; then CONFIG=/etc/trtserve/server.yaml; fi
REPO=${TRTSERVE_MODEL_REPOSITORY:-/var/lib/trtserve/engines}
SEED=${TRTSERVE_SEED_REPOSITORY:-/opt/trtserve/engines}
MODEL_CONFIG_DIR=${TRTSERVE_MODEL_CONFIG_DIR:-/etc/trtserve/models}
BUILD=${TRTSERVE_BUILD_ENGINES:-0}
REQUIRE_GPU=${TRTSERVE_REQUIRE_GPU:-0}
PYTHON=${TRTSERVE_PYTHON:-python3}
DEV=${TRTSERVE_DEV_DIR:-/dev}  # tests point this at a fake /dev

MODELS=""
PRECISION=""

check_config() {
    # Fail fast, before minutes of engine building, with the file and key named (the server's own validation).
    if [ -n "$CONFIG" ]; then
        out=$("$PYTHON" -m trtserve.deploy check-config "$CONFIG" 2>&1) || {
            log "error: bad server configuration, not starting: $out"
            exit 2
        }
    else
        out=$("$PYTHON" -m trtserve.deploy check-config 2>&1) || {
            log "error: bad server settings in the environment, not starting: $out"
            exit 2
        }
    fi
    MODELS=$(printf '%s\n' "$out" | sed -n 's/^models=//p' | tr ',' ' ')
    PRECISION=$(printf '%s\n' "$out" | sed -n 's/^precision=//p')
}

gpu_visible() {
    # x86: the driver's nvidia-smi lists a GPU. Jetson: the integrated GPU's device nodes are mounted in.
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then return 0; fi
    [ -e "$DEV/nvhost-ctrl-gpu" ] || [ -e "$DEV/nvgpu/igpu0" ] || [ -e "$DEV/nvidia0" ]
}

standby_without_gpu() {
    # Exiting would only turn into a silent restart loop; stay up, never listen, so readiness stays false and
    # the reason is the last thing in the log.
    interval=${TRTSERVE_STANDBY_LOG_INTERVAL_S:-300}
    while :; do
        log "error: no NVIDIA GPU is visible in this container, so no TensorRT engine can be built or run." \
            "Run it with the NVIDIA runtime (docker run --gpus all / --runtime nvidia; Kubernetes:" \
            "runtimeClassName nvidia and an nvidia.com/gpu limit), or use the CPU image. Not serving; readiness stays false."
        sleep "$interval"
    done
}

seed_repository() {
    mkdir -p "$REPO"
    for model in $MODELS; do
        mkdir -p "$REPO/$model/cache"
        if [ -d "$SEED/$model" ] && [ "$(cd "$SEED/$model" && pwd -P)" != "$(cd "$REPO/$model" && pwd -P)" ]; then
            # top-level files only: the image's ONNX models and configs win, the cache/ folder stays as it is
            for f in "$SEED/$model"/*; do
                if [ -f "$f" ]; then cp "$f" "$REPO/$model/"; fi
            done
        fi
        if [ -f "$MODEL_CONFIG_DIR/$model.yaml" ]; then
            cp "$MODEL_CONFIG_DIR/$model.yaml" "$REPO/$model/model.yaml"
            log "model $model: configuration from $MODEL_CONFIG_DIR/$model.yaml"
        fi
        if [ ! -f "$REPO/$model/model.yaml" ]; then
            log "error: model $model is listed in the server configuration but $REPO/$model/model.yaml does not exist"
            exit 2
        fi
    done
}

plans() {  # "name mtime" of every cached engine of a model, sorted
    find "$REPO/$1/cache" -maxdepth 1 -name '*.plan' -exec stat -c '%n %Y' {} \; 2>/dev/null | sort
}

build_engines() {
    for model in $MODELS; do
        before=$(plans "$model")
        log "model $model: trtserve build --precision $PRECISION ${TRTSERVE_BUILD_ARGS:-}"
        start=$(date +%s)
        # shellcheck disable=SC2086  # TRTSERVE_BUILD_ARGS is a list of words on purpose
        if ! trtserve --repository "$REPO" build "$model" --precision "$PRECISION" ${TRTSERVE_BUILD_ARGS:-}; then
            log "error: model $model: engine build failed (see above); not serving"
            exit 1
        fi
        after=$(plans "$model")
        seconds=$(( $(date +%s) - start ))
        if [ "$before" = "$after" ]; then
            log "model $model: reused the cached engine for this device"
        elif [ -z "$before" ]; then
            log "model $model: no engine was cached; built one for this device in ${seconds} s"
        else
            others=$(printf '%s\n' "$before" | sed 's/ [0-9]*$//; s|.*/||' | tr '\n' ' ')
            log "model $model: cached engines were for another device or build ($others); rebuilt for this device" \
                "in ${seconds} s"
        fi
    done
}

prepare() {
    check_config
    if [ "$REQUIRE_GPU" = 1 ] && ! gpu_visible; then standby_without_gpu; fi
    seed_repository
    if [ "$BUILD" = 1 ]; then build_engines; fi
    log "ready to serve models [$MODELS] ($PRECISION) from $REPO"
}

cmd=${1:-serve}
if [ $# -gt 0 ]; then shift; fi
case "$cmd" in
    prepare)
        prepare
        ;;
    serve)
        prepare
        if [ -n "$CONFIG" ]; then set -- --config "$CONFIG" "$@"; fi
        exec trtserve --repository "$REPO" serve "$@"
        ;;
    *)
        exec trtserve "$cmd" "$@"
        ;;
esac
