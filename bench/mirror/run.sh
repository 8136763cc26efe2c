#!/usr/bin/env bash
# Registry-mirror benchmark (issue 8): an image of LAYERS x LAYER_MIB pulled by N clients at
# once, through N ringflyd mirrors (one per client, a scheduler between them) vs straight
# from the registry.
#
# Usage: bench/mirror/run.sh [BUILD_DIR]   (or $BUILD_DIR; default: build/release)
# Env:   RUNS (3)          rounds; each round runs "direct" then "mirror" once
#        N (4)             clients (and mirrors)
#        LAYERS (4)        layers of the image
#        LAYER_MIB (64)    MiB of random (incompressible) data per layer
#        KEEP_TMP=1        keep the temp dir (registry, daemon and skopeo logs)
#
# Setup (untimed): docker-registry (distribution 2.8, Debian's) on 127.0.0.1 with filesystem
# storage; the image is made as an OCI layout and pushed with skopeo (tests/integration/
# lib-registry.sh does both). Then, per round:
#   direct  N x `skopeo copy docker://REGISTRY/bench/img:v1 dir:OUT_i` at once.
#   mirror  a new ringfly-scheduler and N new ringflyd (new data dirs: a cold cache, new page
#           cache to write), each `--http 127.0.0.1:0 --registry REGISTRY --scheduler S`, then
#           N x `skopeo copy docker://MIRROR_i/bench/img:v1 dir:OUT_i` at once, one client per
#           mirror. The daemons are stopped and their data removed after the round.
# Timed: from the first skopeo's start to the last one's exit. Egress: the registry's access
# log bytes during the round (manifests and blobs; 2xx and errors). skopeo checks every
# blob's digest; the round fails if one exits non-zero.
# CPU: the daemons' (ringflyd + scheduler) CPU-seconds per GiB delivered to the clients
# (N x image), and the registry's own CPU-seconds per GiB it sent, from /proc.
#
# Prints, per round, both times and egresses, then medians and:
#   time ratio   = mirror / direct (lower is better)
#   egress ratio = mirror egress / image size (target <= 1.1; direct is N x)
set -u
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-${BUILD_DIR:-$root/build/release}}
# shellcheck source-path=SCRIPTDIR source=../common/lib.sh
. "$root/bench/common/lib.sh"
require_built "$root" "$build" "" "$build/ringflyd" "$build/ringfly" "$build/ringfly-scheduler"
export RINGFLYD=$build/ringflyd RINGFLY=$build/ringfly RINGFLY_SCHEDULER=$build/ringfly-scheduler
# The integration tests' helpers: temp dir, tracked processes (killed on exit), registry,
# images, skopeo, mirrors. Their fail replaces bench/common's.
# shellcheck source=../../tests/integration/lib.sh
. "$root/tests/integration/lib.sh"
# shellcheck source=../../tests/integration/lib-http.sh
. "$root/tests/integration/lib-http.sh"
# shellcheck source=../../tests/integration/lib-p2p.sh
. "$root/tests/integration/lib-p2p.sh"
# shellcheck source=../../tests/integration/lib-netns.sh
. "$root/tests/integration/lib-netns.sh"
# shellcheck source=../../tests/integration/lib-registry.sh
. "$root/tests/integration/lib-registry.sh"
# shellcheck source=../../tests/integration/lib-mirror.sh
. "$root/tests/integration/lib-mirror.sh"

RUNS=${RUNS:-3}
N=${N:-4}
LAYERS=${LAYERS:-4}
LAYER_MIB=${LAYER_MIB:-64}
MiB=1048576
require_registry
require_skopeo

now_ms; t0=$NOW_MS
oci_image_make "$T/img" v1 "$LAYERS" $((LAYER_MIB * MiB))
registry_start
registry_push "$T/img" v1 bench/img
IMAGE_BYTES=$OCI_CONFIG_SIZE
for s in "${OCI_LAYER_SIZES[@]}"; do IMAGE_BYTES=$((IMAGE_BYTES + s)); done
now_ms
echo "image: $LAYERS layers x $LAYER_MIB MiB, $IMAGE_BYTES bytes of blobs; made and pushed in $((NOW_MS - t0)) ms"
echo "clients: $N at once; rounds: $RUNS (cold: new daemons and data dirs every round)"

# pull_all PREFIX HOSTPORT...: N skopeo pulls at once, one per HOSTPORT; sets ROUND_MS.
pull_all() {
    local prefix=$1 i pids=() t_start
    shift
    now_ms; t_start=$NOW_MS
    i=0
    for hp in "$@"; do
        (SKOPEO_DEADLINE=600 skopeo_pull "$hp" bench/img v1 "$T/$prefix.$i") &
        pids+=($!)
        i=$((i + 1))
    done
    for i in "${!pids[@]}"; do
        wait "${pids[$i]}" || fail "$prefix: pull $i failed: $(tail -c 2000 "$T"/skopeo.*.err)"
    done
    now_ms
    ROUND_MS=$((NOW_MS - t_start))
    for ((i = 0; i < $#; i++)); do
        assert_pulled_layers "$T/$prefix.$i"
        rm -rf "$T/$prefix.$i"
    done
}

# cpu_s PID...: CPU-seconds of the processes (and their threads), summed.
cpu_s() {
    local total=0 pid c
    for pid in "$@"; do
        c=$(proc_cpu "$pid") || c=0
        total=$(awk -v a="$total" -v b="$c" 'BEGIN { printf "%.3f", a + b }')
    done
    echo "$total"
}

# measured_pull PREFIX HOSTPORT...: pull_all, and what the registry spent on it: sets
# ROUND_MS, ROUND_EGRESS (bytes) and ROUND_REG_CPU (its CPU-seconds per GiB it sent).
measured_pull() {
    local b0 b1 c0 c1
    b0=$(registry_bytes_total); c0=$(cpu_s "$REGISTRY_PID")
    pull_all "$@"
    b1=$(registry_bytes_total); c1=$(cpu_s "$REGISTRY_PID")
    ROUND_EGRESS=$((b1 - b0))
    ROUND_REG_CPU=$(awk -v a="$c0" -v b="$c1" -v e="$ROUND_EGRESS" \
        'BEGIN { printf "%.3f", (e > 0 ? (b - a) / (e / 1073741824) : 0) }')
}

direct_ms='' mirror_ms='' direct_egress='' mirror_egress='' daemon_cpu='' reg_cpu_d='' reg_cpu_m=''
gib_delivered=$(awk -v b="$IMAGE_BYTES" -v n="$N" 'BEGIN { printf "%.4f", b * n / 1073741824 }')
for ((run = 1; run <= RUNS; run++)); do
    # --- direct.
    hps=()
    for ((i = 0; i < N; i++)); do hps+=("$REGISTRY_HOST"); done
    measured_pull "direct$run" "${hps[@]}"
    d_ms=$ROUND_MS d_eg=$ROUND_EGRESS d_rc=$ROUND_REG_CPU

    # --- mirror.
    start_scheduler 127.0.0.1:0
    hps=() dpids=("$SCHED_PID")
    for ((i = 0; i < N; i++)); do
        start_mirror "r${run}m$i" --scheduler "$SCHED_ADDR" --registry "$REGISTRY_URL"
        hps+=("$M_HOST")
        dpids+=("$P_PID")
    done
    measured_pull "mirror$run" "${hps[@]}"
    m_ms=$ROUND_MS m_eg=$ROUND_EGRESS m_rc=$ROUND_REG_CPU
    dc=$(cpu_s "${dpids[@]}")
    d_cpu=$(awk -v c="$dc" -v g="$gib_delivered" 'BEGIN { printf "%.3f", c / g }')
    for pid in "${dpids[@]}"; do kill_and_reap "$pid" KILL; done
    rm -rf "$T"/r"${run}"m*.data

    printf 'round %d: direct %6d ms egress %11d B (%.2fx image) | mirror %6d ms egress %11d B (%.3fx image) | daemons %.3f CPU-s/GiB delivered | registry CPU-s/GiB sent: direct %s, mirror %s\n' \
        "$run" "$d_ms" "$d_eg" "$(awk -v e="$d_eg" -v i="$IMAGE_BYTES" 'BEGIN { print e / i }')" \
        "$m_ms" "$m_eg" "$(awk -v e="$m_eg" -v i="$IMAGE_BYTES" 'BEGIN { print e / i }')" "$d_cpu" "$d_rc" "$m_rc"
    direct_ms+=" $d_ms" mirror_ms+=" $m_ms" direct_egress+=" $d_eg" mirror_egress+=" $m_eg"
    daemon_cpu+=" $d_cpu" reg_cpu_d+=" $d_rc" reg_cpu_m+=" $m_rc"
done

eg_ratio=$(awk -v e="$(median "$mirror_egress")" -v i="$IMAGE_BYTES" 'BEGIN { printf "%.3f", e / i }')
eg_direct=$(awk -v e="$(median "$direct_egress")" -v i="$IMAGE_BYTES" 'BEGIN { printf "%.3f", e / i }')
t_ratio=$(ratio "$mirror_ms" "$direct_ms")
echo
echo "medians of $RUNS rounds (cold):"
echo "  direct: $(median "$direct_ms") ms, registry egress ${eg_direct}x image, registry $(median "$reg_cpu_d") CPU-s/GiB sent"
echo "  mirror: $(median "$mirror_ms") ms, registry egress ${eg_ratio}x image, registry $(median "$reg_cpu_m") CPU-s/GiB sent, daemons $(median "$daemon_cpu") CPU-s/GiB delivered"
echo "  time ratio = mirror / direct = $t_ratio"
echo "  egress ratio = mirror egress / image = $eg_ratio (target <= 1.1: $(verdict "$eg_ratio" "<=" 1.1)); direct: ${eg_direct}"
echo "  ratio = ours / reference (registry bytes) = $(awk -v m="$(median "$mirror_egress")" -v d="$(median "$direct_egress")" 'BEGIN { printf "%.3f", m / d }')"
