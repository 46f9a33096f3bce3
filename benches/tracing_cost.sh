#!/usr/bin/env bash
# What exporting spans costs the server (issue #17), as CPU time per call.
#
# Two servers in the default configuration (the journal, metrics on), one
# exporting every span to a collector that only counts them
# (examples/otlp_sink.rs), the other not, are loaded at the same time by
# two points-bench runs of the same calls: both see the same noise of a
# shared machine, which alternating runs do not (run to run, this 2-core VM
# moves by 10-15 %, as much as the cost being measured). Each round prints
# both servers' CPU microseconds per call, by thread and in all (exited
# threads included), their ratio, and how many spans the exporting one
# dropped: a round that dropped any measured less work than it claims.
#
#   benches/tracing_cost.sh [ROUNDS]
#
# Environment: WORKLOAD (add), CALLS per round (100000), EXPORTED_ARGS (the
# second server's extra arguments; default: export to the counting
# collector; e.g. --otlp-endpoint=http://127.0.0.1:9 for a collector that
# is not there), PORT_BASE (47510: five ports from it).
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${1:-6}
workload=${WORKLOAD:-add}
calls=${CALLS:-100000}
port_base=${PORT_BASE:-47510}
sink_port=$port_base
exported_args=${EXPORTED_ARGS:---otlp-endpoint=http://127.0.0.1:$sink_port}
ticks_per_second=$(getconf CLK_TCK)

cargo build --release --quiet --bin points-server --bin points-bench --example otlp_sink
bin=target/release
work=$(mktemp -d target/tracing-cost.XXXXXX)
pids=()
cleanup() {
    kill "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

"$bin/examples/otlp_sink" "127.0.0.1:$sink_port" >"$work/sink.log" 2>&1 &
sink=$!
pids=("$sink")

# utime + stime, the 14th and 15th fields of a stat file (counted after
# the command name, which may hold spaces).
stat_ticks() {
    sed 's/.*) //' "$1" | awk '{print $12 + $13}'
}

# CPU ticks process $1 has used, by thread name ("name ticks" lines, for
# the threads alive now) and in all (the line "~all", exited threads
# included).
thread_ticks() {
    {
        for task in /proc/"$1"/task/*; do
            echo "$(tr -d '0123456789' <"$task/comm") $(stat_ticks "$task/stat")"
        done | awk '{sum[$1] += $2} END {for (name in sum) print name, sum[name]}'
        echo "~all $(stat_ticks "/proc/$1/stat")"
    } | sort
}

# Microseconds of CPU per call by thread, between two thread_ticks outputs.
per_call() {
    join -a 2 -e 0 -o 0,1.2,2.2 "$1" "$2" | awk -v hz="$ticks_per_second" -v calls="$calls" \
        '{us = ($3 - $2) * 1e6 / hz / calls}
         $1 == "~all" {total = us; next}
         us > 0 {printf "%s %.1f, ", $1, us}
         END {printf "total %.1f", total}'
}

# Bounded, so that a wedged server cannot hold the script forever.
load() {
    timeout 600 "$bin/points-bench" --addr "http://127.0.0.1:$1" --workloads "$workload" --calls "$2" \
        --warmup-secs 0 >/dev/null
}

for round in $(seq 1 "$rounds"); do
    rm -rf "$work/off" "$work/exported"
    "$bin/points-server" --listen "127.0.0.1:$((port_base + 1))" \
        --metrics-listen "127.0.0.1:$((port_base + 2))" --data-dir "$work/off" \
        >"$work/off.log" 2>&1 &
    off=$!
    # shellcheck disable=SC2086 # the arguments are meant to be split
    "$bin/points-server" --listen "127.0.0.1:$((port_base + 3))" \
        --metrics-listen "127.0.0.1:$((port_base + 4))" --data-dir "$work/exported" \
        $exported_args >"$work/exported.log" 2>&1 &
    exported=$!
    pids+=("$off" "$exported")
    sleep 1
    # Warm-up, then the measured calls, both servers at once.
    load $((port_base + 1)) 20000 & loading=$!
    load $((port_base + 3)) 20000; wait "$loading"
    thread_ticks "$off" >"$work/off.0"; thread_ticks "$exported" >"$work/exported.0"
    load $((port_base + 1)) "$calls" & loading=$!
    load $((port_base + 3)) "$calls"; wait "$loading"
    thread_ticks "$off" >"$work/off.1"; thread_ticks "$exported" >"$work/exported.1"
    dropped=$(curl -s --max-time 5 "127.0.0.1:$((port_base + 4))/metrics" \
        | awk '/^points_trace_spans_dropped_total/ {print $2}')
    kill "$off" "$exported"
    wait "$off" "$exported" 2>/dev/null || true
    pids=("$sink")
    off_line=$(per_call "$work/off.0" "$work/off.1")
    exported_line=$(per_call "$work/exported.0" "$work/exported.1")
    ratio=$(awk -v a="${off_line##*total }" -v b="${exported_line##*total }" \
        'BEGIN {printf "%.3f", b / a}')
    echo "round $round: off: $off_line | exported: $exported_line | ratio $ratio | spans dropped: ${dropped:-none}"
done
