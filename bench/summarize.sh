#!/usr/bin/env bash
# bench/summarize.sh RESULTS_DIR: the Markdown tables and target ratios of one
# bench/run.sh run (results.tsv, ping.tsv, storm.txt), on stdout.
set -euo pipefail
DIR=${1:?usage: summarize.sh RESULTS_DIR}
TSV=$DIR/results.tsv

# table PHASE [MODE]: the rows of one phase as a Markdown table.
table() {
    awk -F'\t' -v phase="$1" -v mode="${2:-}" '
        NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
        $col["phase"] != phase || (mode != "" && $col["mode"] != mode) { next }
        !shown++ {
            print "| target | point | req/s | p50 ms | p99 ms | p99.9 ms | errors | keygate CPU µs/req | keygate peak RSS MB | Redis CPU µs/req | Redis round trips/ok req | script calls/ok req | mock CPU µs/req | nginx CPU µs/req | oha CPU µs/req | upstream req/req | degraded |"
            print "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
        }
        {
            dg = ($col["degraded_switches"] + $col["degraded_at_end"] > 0) ? $col["degraded_switches"] " switches, " $col["degraded_at_end"] " at end" : "no"
            printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
                $col["target"], $col["point"], $col["rps"], $col["p50_ms"], $col["p99_ms"],
                $col["p999_ms"], $col["errors"], $col["kg_cpu_us"], $col["kg_peak_mb"],
                $col["redis_cpu_us"], $col["redis_rt"], $col["redis_inner"], $col["mock_cpu_us"],
                $col["nginx_cpu_us"], $col["oha_cpu_us"], $col["upstream_per_req"], dg
        }' "$TSV"
}

# value PHASE MODE TARGET POINT COLUMN: one cell (the median when the point ran several times).
value() {
    awk -F'\t' -v p="$1" -v m="$2" -v t="$3" -v pt="$4" -v c="$5" '
        NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
        $col["phase"] == p && $col["mode"] == m && $col["target"] == t && $col["point"] == pt { v[n++] = $col[c] }
        END {
            if (!n) { print "nan"; exit }
            asort(v); print (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
        }' "$TSV"
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "nan" || b == "nan" || b == 0) print "n/a"; else printf "%.2f", a / b }'; }

echo "# bench/run.sh results: $(basename "$DIR")"
echo
echo '```'
cat "$DIR/machine.txt"
echo '```'
for mode in fast delay; do
    if grep -q "^matrix	$mode	" "$TSV"; then
        echo
        echo "## Matrix, mock $mode ($([[ $mode == fast ]] && echo 'no delay' || echo '--delay-ms 50'))"
        echo
        table matrix "$mode"
    fi
done
if grep -q '^floor	' "$TSV"; then
    echo
    echo "## Floor: interleaved rounds (3 s points; c=1, and c=64 for the two stores), redis-benchmark -c 1 -n 20000 after each round"
    echo
    table floor
    echo
    echo "redis-benchmark -c 1 p50 per round, ms (PING unpinned, and with redis-benchmark pinned to Redis's vCPU and to the other one; replays of replica 1's select and report script calls):"
    echo
    echo "| round | PING | PING, same vCPU | PING, other vCPU | select | report |"
    echo "|---|---:|---:|---:|---:|---:|"
    awk -F'\t' 'NR > 1 { printf "| %s | %s | %s | %s | %s | %s |\n", $1, $2, ($5 == "" ? "-" : $5), ($6 == "" ? "-" : $6), $3, $4 }' "$DIR/rtt.tsv"
fi
if grep -q '^sweep	' "$TSV"; then
    echo
    echo "## Pool-size sweep (Redis store, mock without delay)"
    echo
    table sweep
    echo
    echo "Per replica: time to ready, RSS 3 s after start (idle), degraded mode then, one /metrics scrape after the load: its size and the peak RSS while it was rendered, degraded mode after it. A \`-t500\` row ran with \`[store] timeout_ms = 500\` because the default (50) left the replica degraded."
    echo
    echo "| pool | ready s | idle RSS MB | degraded when idle | /metrics bytes | peak RSS during scrape MB | degraded after scrape |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    [[ ! -f $DIR/sweep.tsv ]] ||
        awk -F'\t' 'NR > 1 { printf "| %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7 }' "$DIR/sweep.tsv"
fi
if grep -q '^sizepair	' "$TSV"; then
    echo
    echo "## Pool size, interleaved rounds (the smallest and the largest pool alternate, a fresh replica each)"
    echo
    table sizepair
fi
if grep -q '^budgets	' "$TSV"; then
    echo
    echo "## Budgets configured but not binding (64 keys, Redis store, interleaved rounds, a fresh replica each)"
    echo
    table budgets
fi
if grep -q '^sustained	' "$TSV"; then
    echo
    echo "## Sustained load (the largest pool, Redis store, c=64 past the 60 s snapshot refresh, a fresh replica)"
    echo
    table sustained
fi
if [[ -f $DIR/storm.txt ]]; then
    echo
    echo "## 429 storm (nginx -> 3 replicas, pool of 8, one key turns 429 Retry-After: 5)"
    echo
    sed 's/^/    /' "$DIR/storm.txt"
    echo
    echo "Arrivals at the key, each change (ms since the switch: arrivals since the switch):"
    echo
    awk -F'\t' '!/^#/ && NR > 1 { printf "%.0f: %s; ", $1 * 1000, $2 } END { print "" }' "$DIR/storm.tsv"
fi
if grep -q '^logging	' "$TSV"; then
    echo
    echo "## Logging cost: the embedded replica with RUST_LOG=info (one line per request, to a file)"
    echo
    table logging
fi
if grep -q '^pinned	' "$TSV"; then
    echo
    echo "## Pinned (redis, keygate, nginx on core 0; mock and oha on core 1), mock without delay"
    echo
    table pinned
fi
if grep -q '^profile	' "$TSV"; then
    echo
    echo "## Profile run"
    echo
    table profile
fi

echo
echo "## Targets (this run)"
echo
direct=$(value floor fast direct c1 p50_ms)
emb=$(value floor fast kg-embedded c1 p50_ms)
red=$(value floor fast kg-redis c1 p50_ms)
median_col() {
    [[ -f $DIR/rtt.tsv ]] || { echo nan; return; }
    awk -F'\t' -v c="$1" 'NR > 1 {print $c}' "$DIR/rtt.tsv" | sort -n |
        awk '{v[NR] = $1} END {print NR ? v[int((NR + 1) / 2)] : "nan"}'
}
ping=$(median_col 2)
sel=$(median_col 3)
rep=$(median_col 4)
ping_same=$(median_col 5)
ping_other=$(median_col 6)
awk -v d="$direct" -v e="$emb" -v r="$red" -v p="$ping" -v s="$sel" -v q="$rep" -v ps="$ping_same" -v po="$ping_other" 'BEGIN {
    if (d == "nan" || e == "nan" || r == "nan" || p == "nan") { print "- added latency: floor phase missing"; exit }
    floor = (e - d) + 2 * p; added = r - d
    printf "- Added latency at c=1, p50 (medians of the floor rounds): keygate+Redis %.3f − direct %.3f = %.3f ms; floor = (embedded %.3f − direct) + 2 × PING %.3f = %.3f ms; **ratio %.2f** (target ≤ 1.3)\n", r, d, added, e, p, floor, added / floor
    if (ps != "nan" && ps != "" && po != "nan" && po != "")
        printf "  - with PING placed: on Redis'"'"'s vCPU %.3f ms, ratio %.2f; on the other vCPU %.3f ms, ratio %.2f (an unpinned PING lands on either)\n", ps, added / ((e - d) + 2 * ps), po, added / ((e - d) + 2 * po)
    if (s != "nan" && s != "")
        printf "  - with the real scripts instead of PING: (embedded − direct) + select %.3f + report %.3f = %.3f ms; ratio %.2f. Redis-store keygate minus embedded: %.3f ms\n", s, q, (e - d) + s + q, added / ((e - d) + s + q), r - e
}'
fr=$(value floor fast kg-redis c64 rps)
fe=$(value floor fast kg-embedded c64 rps)
[[ $fr == nan ]] || echo "- Redis-store throughput at c=64 as share of embedded, interleaved rounds (medians, floor phase): $fr / $fe req/s = **$(ratio "$fr" "$fe")** (target ≥ 0.70)"
# Against the physical limit: bare nginx proxy_pass with a key header, same rounds.
fn=$(value floor fast nginx-bare c64 rps)
if [[ $fn != nan ]]; then
    echo "- Throughput at c=64 as share of bare nginx proxy_pass, interleaved rounds (medians): Redis store $fr / $fn = **$(ratio "$fr" "$fn")** (target ≥ 0.80); embedded $fe / $fn = **$(ratio "$fe" "$fn")** (target ≥ 0.90)"
    fh=$(value floor fast hyper-bare c64 rps)
    [[ $fh == nan ]] || echo "- The stack's floor, same rounds: bare hyper (benches/bare_proxy.rs) $fh / nginx $fn = **$(ratio "$fh" "$fn")**; keygate over its stack: Redis store $fr / $fh = $(ratio "$fr" "$fh"), embedded $fe / $fh = $(ratio "$fe" "$fh")"
    nb=$(value floor fast nginx-bare c1 p50_ms)
    hb=$(value floor fast hyper-bare c1 p50_ms)
    awk -v d="$direct" -v n="$nb" -v h="$hb" -v e="$emb" -v r="$red" -v p="$ping" 'BEGIN {
        if (d == "nan" || n == "nan" || r == "nan" || p == "nan") exit
        if (h != "nan") printf "- Added p50 at c=1 over direct, bare hyper: %.3f ms\n", h - d
        printf "- Added p50 at c=1 over direct: nginx %.3f ms, keygate embedded %.3f ms, keygate+Redis %.3f ms; target for keygate+Redis: PING %.3f + 0.030 = %.3f ms (**%s**)\n", n - d, e - d, r - d, p, p + 0.030, (r - d <= p + 0.030) ? "met" : "not met"
    }'
fi
for mode in fast delay; do
    r=$(value matrix "$mode" kg-redis c64 rps)
    e=$(value matrix "$mode" kg-embedded c64 rps)
    [[ $r == nan ]] || echo "- Redis-store throughput at c=64 as share of embedded, mock $mode: $r / $e req/s = **$(ratio "$r" "$e")** (target ≥ 0.70)"
done
# pool_sizes PHASE: the smallest and the largest pool size ("keys-N" targets) of a phase, or "0 0".
pool_sizes() {
    awk -F'\t' -v p="$1" 'NR > 1 && $1 == p {split($3, a, "-"); n = a[2] + 0; if (n > m) m = n; if (!s || n < s) s = n}
        END {print s + 0, m + 0}' "$TSV"
}
read -r small big <<<"$(pool_sizes sweep)"
if ((big > 0)); then
    bl="keys-$big"
    [[ $(value sweep fast "keys-$big-t500" c64 rps) == nan ]] || bl="keys-$big-t500"
    sl="keys-$small"
    echo "- Selection at $big keys ($bl) vs $small keys, end to end: c=64 throughput $(value sweep fast "$bl" c64 rps) / $(value sweep fast "$sl" c64 rps) = **$(ratio "$(value sweep fast "$bl" c64 rps)" "$(value sweep fast "$sl" c64 rps)")**; c=1 p50 $(value sweep fast "$bl" c1 p50_ms) / $(value sweep fast "$sl" c1 p50_ms) ms = **$(ratio "$(value sweep fast "$bl" c1 p50_ms)" "$(value sweep fast "$sl" c1 p50_ms)")**; Redis CPU µs/req at c=64 $(value sweep fast "$bl" c64 redis_cpu_us) / $(value sweep fast "$sl" c64 redis_cpu_us) (target: within 25%)"
    echo "- Peak RSS of one replica under load at $big keys ($bl, c=64): **$(value sweep fast "$bl" c64 kg_peak_mb) MB**; at $small keys $(value sweep fast "$sl" c64 kg_peak_mb) MB (target < 50 MB)"
fi
read -r small big <<<"$(pool_sizes sizepair)"
if ((big > 0)); then
    pb=$(value sizepair fast "keys-$big" c64 rps) ps=$(value sizepair fast "keys-$small" c64 rps)
    [[ $pb == nan ]] || echo "- Selection at $big vs $small keys, interleaved rounds (medians, sizepair phase): c=64 throughput $pb / $ps = **$(ratio "$pb" "$ps")**; c=1 p50 $(value sizepair fast "keys-$big" c1 p50_ms) / $(value sizepair fast "keys-$small" c1 p50_ms) ms = **$(ratio "$(value sizepair fast "keys-$big" c1 p50_ms)" "$(value sizepair fast "keys-$small" c1 p50_ms)")**; Redis CPU µs/req at c=64 $(value sizepair fast "keys-$big" c64 redis_cpu_us) / $(value sizepair fast "keys-$small" c64 redis_cpu_us) (target: within 25%)"
fi
bon=$(value budgets fast budgets-on c64 rps) boff=$(value budgets fast budgets-off c64 rps)
[[ $bon == nan ]] || echo "- Budgets configured but not binding against none, interleaved rounds (medians, budgets phase): c=64 throughput $bon / $boff = **$(ratio "$bon" "$boff")** (target ≥ 0.90); Redis round trips/ok req at c=64 $(value budgets fast budgets-on c64 redis_rt) / $(value budgets fast budgets-off c64 redis_rt) (target: unchanged); c=1 p50 $(value budgets fast budgets-on c1 p50_ms) / $(value budgets fast budgets-off c1 p50_ms) ms"
read -r _ big <<<"$(pool_sizes sustained)"
if ((big > 0)); then
    echo "- Peak RSS of one replica under sustained load at $big keys (c=64 for $(value sustained fast "keys-$big" c64 secs) s, the 60 s snapshot refresh inside): **$(value sustained fast "keys-$big" c64 kg_peak_mb) MB** (target < 50 MB)"
fi
awk -F'\t' 'NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
    $col["kg_peak_mb"] != "-" && $col["target"] != "nginx-kg3" && $col["kg_peak_mb"] + 0 > m { m = $col["kg_peak_mb"] + 0; w = $col["phase"] " " $col["mode"] " " $col["target"] " " $col["point"] }
    END { printf "- Peak RSS of one replica, largest of any load point: %.1f MB (%s)\n", m, w }' "$TSV"
awk -F'\t' 'NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
    ($col["target"] == "kg-redis" || $col["target"] ~ /^keys-/) && $col["redis_rt"] != "-" {
        if ($col["redis_rt"] + 0 > m) { m = $col["redis_rt"] + 0; w = $col["phase"] " " $col["mode"] " " $col["target"] " " $col["point"] }
        if ($col["phase"] == "matrix" && $col["mode"] == "fast" && $col["point"] == "c64") c = $col["redis_rt"] }
    END { printf "- Redis round trips per successful request: %s at c=64 (matrix, fast); largest of any single-replica point %.2f (%s) (target ≤ 2)\n", c, m, w }' "$TSV"
if [[ -f $DIR/streams.tsv ]]; then
    echo
    echo "## Streams (one replica, Redis store, against the same streams sent directly)"
    echo
    awk -F'\t' 'NR == 1 { printf "|"; for (i = 1; i <= NF; i++) printf " %s |", $i; printf "\n|"; for (i = 1; i <= NF; i++) printf "---|"; printf "\n"; next }
        { printf "|"; for (i = 1; i <= NF; i++) printf " %s |", $i; printf "\n" }' "$DIR/streams.tsv"
    echo
    awk -F'\t' 'NR > 1 && $2 == "direct" { d[$1] = $0; next }
        NR > 1 && $2 ~ /^keygate/ && ($1 in d) {
            split(d[$1], x, "\t")
            printf "- %d streams, %s: rate %.2f of direct (target ≥ 0.95); time to first byte added p50 %.2f ms (≤ 0.2), p99 %.2f ms (≤ 2); duration added p50 %.2f ms, p99 %.2f ms; errors %s (target 0); %.1f KB per open stream (≤ 16); idle RSS %s MB, %s MB a minute after (target within 10%% of idle); upstream connections %s under load, %s after\n",
                $1, $2, $3 / x[3], $4 - x[4], $5 - x[5], $6 - x[6], $7 - x[7], $8, $12, $10, $15, $14, $16
        }' "$DIR/streams.tsv"
    # The floor: bare nginx proxying the same streams (its rows carry no idle wait).
    awk -F'\t' 'NR > 1 && $2 == "direct" { d[$1] = $0; next }
        NR > 1 && $2 == "nginx-bare" && ($1 in d) {
            split(d[$1], x, "\t")
            printf "- %d streams, nginx-bare (the floor): rate %.2f of direct; time to first byte added p50 %.2f ms, p99 %.2f ms; errors %s; %.1f KB per open stream; %.1f µs of CPU per event\n",
                $1, $3 / x[3], $4 - x[4], $5 - x[5], $8, $12, $13
        }' "$DIR/streams.tsv"
fi
