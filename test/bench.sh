#!/usr/bin/env bash
# make bench, part 2: the kernel's FTP helper and ftpgate, one after the
# other, on the same lab and the same load, side by side. Root only.
#
# Parameters (environment):
#   SESSIONS   concurrent control sessions per mode          (default 20)
#   TRANSFERS  transfers per session, each a new data conn.  (default 500)
#   MODES      subset of: pasv4 epsv4 port4 eprt4 epsv6 eprt6 (default: all)
#   CAPTURE    ftpgate's --capture: inline or passive         (default inline)
#   NAT_MODES  subset of: lan-port4 lan-pasv4 dmz-pasv4 on the NAT lab
#              (natlab.sh; LAN clients behind masquerade, active and
#              passive, and internet clients of the DMZ server behind the
#              port forward)                                  (default: all; "" skips)
#   IDLE       control sessions for the idle measurement      (default 10000; 0 skips)
#   NAT_IDLE   idle control sessions through the NAT lab's masquerade, LAN
#              to an internet server, each a translated session (default
#              5000, or 0 if IDLE is 0; 0 skips)
#   FTPGATE_ARGS  more flags for every ftpgate run, after the bench's own
#              (e.g. "--nat-path proxy")                      (default none)
#   CPU_PROFILE   1: each ftpgate run writes a Go CPU profile to OUT/cpu-NAME.prof
#   OUT        directory for the results                      (default bench-results/TIMESTAMP)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
FTPGATE=${FTPGATE:-$ROOT/bin/ftpgate}
FTPLOAD=${FTPLOAD:-$ROOT/bin/ftpload}
SESSIONS=${SESSIONS:-20}
TRANSFERS=${TRANSFERS:-500}
MODES=${MODES:-"pasv4 epsv4 port4 eprt4 epsv6 eprt6"}
NAT_MODES=${NAT_MODES-"lan-port4 lan-pasv4 dmz-pasv4"}
CAPTURE=${CAPTURE:-inline}
IDLE=${IDLE:-10000}
NAT_IDLE=${NAT_IDLE:-$((IDLE > 0 ? 5000 : 0))}
FTPGATE_ARGS=${FTPGATE_ARGS:-}
CPU_PROFILE=${CPU_PROFILE:-}
OUT=${OUT:-$ROOT/bench-results/$(date -u +%Y%m%dT%H%M%SZ)}
export LAB=ftpgbench LAB_DIR=/tmp/ftpgbench-lab
C=$LAB-client G=$LAB-gw S=$LAB-server

[ "$(id -u)" = 0 ] || { echo "the lab benchmark needs root" >&2; exit 1; }
mkdir -p "$OUT"
RESULTS=$OUT/results.jsonl
: >"$RESULTS"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true # the idle sessions need one descriptor each

pid=""; idle=""
cleanup() {
	[ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
	[ -n "$idle" ] && kill "$idle" 2>/dev/null
	"$HERE/lab.sh" down
	LAB=ftpgbnat LAB_DIR=/tmp/ftpgbnat-lab "$HERE/natlab.sh" down
}
trap cleanup EXIT
"$HERE/lab.sh" up

server_of() { case $1 in *6) echo 2001:db8:2::20 ;; *) echo 198.51.100.20 ;; esac; }
label_of() { local m=${1%?}; echo "${m^^} v${1: -1}"; }
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
hwm_kib() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
tck=$(getconf CLK_TCK)

echo "benchmark: $SESSIONS sessions x $TRANSFERS transfers per mode, modes: $MODES, NAT modes: $NAT_MODES, ftpgate --capture $CAPTURE $FTPGATE_ARGS"
echo "command:   SESSIONS=$SESSIONS TRANSFERS=$TRANSFERS MODES=\"$MODES\" NAT_MODES=\"$NAT_MODES\" CAPTURE=$CAPTURE IDLE=$IDLE NAT_IDLE=$NAT_IDLE FTPGATE_ARGS=\"$FTPGATE_ARGS\" bash test/bench.sh"
# Each mode runs on both gateways back to back, so that both see the same
# state of the lab, and which goes first alternates from mode to mode, so
# that a lab slowly filling up (conntrack entries, TIME_WAIT sockets) does
# not always count against the same one. ftpgate starts afresh for each
# mode, so its CPU and peak RSS are that mode's. TAG names its profile.
# The idle sessions all come from one client: its share of the session
# cap (a sixteenth by default) is raised to the whole cap. Each run has
# a NAT packet path state file of its own, so that none carries over the
# connections of an earlier run (the default file is named after the
# network namespace's inode, which a new lab may get again).
starts=0
start_ftpgate() {
	local prof=()
	starts=$((starts + 1))
	[ -n "$CPU_PROFILE" ] && prof=(--cpu-profile "$OUT/cpu-${TAG:-run}.prof")
	# shellcheck disable=SC2086 # FTPGATE_ARGS is a list of flags
	ip netns exec "${NS:-$G}" "$FTPGATE" run --capture "$CAPTURE" --log-level warn --max-sessions 65536 --max-sessions-per-client 65536 \
		--nat-state "$OUT/nat-state-$starts.json" "${prof[@]}" "$@" $FTPGATE_ARGS \
		>>"$OUT/ftpgate.log" 2>&1 &
	pid=$!
	# ftpgate status answers once ftpgate is ready (READY=1): on a slow
	# machine (the VM of test/vm) that can take seconds.
	local i
	for i in $(seq 600); do
		kill -0 "$pid" 2>/dev/null || { cat "$OUT/ftpgate.log"; exit 1; }
		"$FTPGATE" status >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	echo "ftpgate not ready after 60 s" >&2; cat "$OUT/ftpgate.log"; exit 1
}
stop_ftpgate() {
	if [ -n "$pid" ]; then kill "$pid"; wait "$pid" || true; pid=""; fi
}
# session_counters: ftpgate's counters of control sessions started, run
# through the control proxy and followed in the NAT packet path.
session_counters() {
	local c
	c=$("$FTPGATE" status --format json | grep -o '"sessions_\(started\|proxied\|translated\)":[0-9]*' | paste -sd, -) || true
	echo "${c:-\"sessions_started\":null}"
}
# measure runs the load from namespace $3 (ftpload run flags follow) and
# records it as gateway $1, mode $2, with ftpgate's CPU and peak RSS.
measure() {
	local gw=$1 label=$2 from=$3
	shift 3
	local before=0 cpu=0 rss=0 res counters='"sessions_started":null'
	[ -n "$pid" ] && before=$(cpu_ticks "$pid")
	res=$(ip netns exec "$from" "$FTPLOAD" run "$@" --sessions "$SESSIONS" --transfers "$TRANSFERS")
	if [ -n "$pid" ]; then
		cpu=$(awk -v a="$before" -v b="$(cpu_ticks "$pid")" -v t="$tck" 'BEGIN{printf "%.2f", (b-a)/t}')
		rss=$(hwm_kib "$pid")
		counters=$(session_counters)
	fi
	stop_ftpgate
	echo "{\"gateway\":\"$gw\",\"name\":\"$label\",\"cpu_s\":$cpu,\"peak_rss_kib\":$rss,$counters,\"result\":$res}" >>"$RESULTS"
	echo "  $gw $label: $res"
}
order="kernel ftpgate"
for m in $MODES; do
	for gw in $order; do
		"$HERE/lab.sh" ruleset "$gw"
		[ "$gw" = ftpgate ] && TAG=$m start_ftpgate
		measure "$gw" "$(label_of "$m")" $C --server "$(server_of "$m")" --mode "${m%?}"
	done
	order=$(echo "$order" | awk '{print $2, $1}')
done
# idle_sessions holds $1 idle control sessions from namespace $2 to the
# idle server that namespace $3 runs on $4, through ftpgate (already
# started), and writes OUT/$5.json: ftpgate's RSS before, its peak, the
# KiB that each session took (the peak over the RSS before), its RSS at
# the end of the hold (the last of a sample every half second), its CPU,
# and its counters of sessions (started, through the proxy, in the
# packet path).
idle_sessions() {
	local n=$1 from=$2 srvns=$3 addr=$4 name=$5 rss0 c0 c1 ires peak kib counters client held=0
	ip netns exec "$srvns" "$FTPLOAD" idle-server --listen "$addr" &
	idle=$!
	sleep 1
	rss0=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
	c0=$(cpu_ticks "$pid")
	ip netns exec "$from" "$FTPLOAD" idle --server "$addr" --sessions "$n" --hold 15s >"$OUT/$name.client" &
	client=$!
	while kill -0 "$client" 2>/dev/null; do
		held=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
		sleep 0.5
	done
	wait "$client"
	ires=$(cat "$OUT/$name.client")
	c1=$(cpu_ticks "$pid")
	peak=$(hwm_kib "$pid")
	kib=$(awk -v a="$rss0" -v b="$peak" -v n="$(echo "$ires" | sed 's/.*"logged_in":\([0-9]*\).*/\1/')" 'BEGIN{printf "%.2f", (n > 0 ? (b-a)/n : 0)}')
	counters=$(session_counters)
	echo "{\"idle\":$ires,\"rss_before_kib\":$rss0,\"peak_rss_kib\":$peak,\"kib_per_session\":$kib,\"rss_held_kib\":$held,\"cpu_s\":$(awk -v a="$c0" -v b="$c1" -v t="$tck" 'BEGIN{printf "%.2f", (b-a)/t}'),$counters}" >"$OUT/$name.json"
	echo "  $name: $(cat "$OUT/$name.json")"
	kill "$idle"; wait "$idle" 2>/dev/null || true; idle=""
}
if [ -n "$NAT_MODES" ] || [ "$NAT_IDLE" -gt 0 ]; then
	# The same load through a NAT gateway: the admin's masquerade and
	# port forward, nf_nat_ftp against ftpgate's NAT (--nat-path).
	nat() { LAB=ftpgbnat LAB_DIR=/tmp/ftpgbnat-lab "$HERE/natlab.sh" "$@"; }
	nat up
	ip netns exec ftpgbnat-inet sysctl -qw net.ipv4.tcp_max_tw_buckets=4096
	ip netns exec ftpgbnat-dmz sysctl -qw net.ipv4.tcp_max_tw_buckets=4096
	for m in $NAT_MODES; do
		case $m in
		lan-port4) from=ftpgbnat-lan to=203.0.113.10 mode=port label="NAT LAN PORT v4" ;;
		lan-pasv4) from=ftpgbnat-lan to=203.0.113.10 mode=pasv label="NAT LAN PASV v4" ;;
		dmz-pasv4) from=ftpgbnat-inet to=203.0.113.1 mode=pasv label="NAT DMZ PASV v4" ;;
		*) echo "unknown NAT mode $m" >&2; exit 2 ;;
		esac
		for gw in $order; do
			nat ruleset "$gw"
			[ "$gw" = ftpgate ] && NS=ftpgbnat-gw TAG=$m start_ftpgate
			measure "$gw" "$label" $from --server "$to" --mode "$mode"
		done
		order=$(echo "$order" | awk '{print $2, $1}')
	done
	if [ "$NAT_IDLE" -gt 0 ]; then
		# Idle translated control sessions: LAN clients through the
		# masquerade to a light idle server on the internet host's
		# 2121, which ftpgate watches; its bounds on translated sessions
		# (--max-proxied, per client too) raised above their number.
		nat ruleset ftpgate
		NS=ftpgbnat-gw TAG=nat-idle start_ftpgate --control-ports 21,2121 \
			--max-proxied $((NAT_IDLE + 100)) --max-proxied-per-client $((NAT_IDLE + 100))
		idle_sessions "$NAT_IDLE" ftpgbnat-lan ftpgbnat-inet 203.0.113.10:2121 nat-idle
		stop_ftpgate
	fi
	nat down
fi
if [ "$IDLE" -gt 0 ]; then
	# Idle control sessions: a light FTP server on port 2121 (vsftpd
	# would need two processes per session), ftpgate watching 21 and 2121.
	"$HERE/lab.sh" ruleset ftpgate
	ip netns exec $G nft add rule inet filter forward tcp dport 2121 ct state new accept
	TAG=idle start_ftpgate --control-ports 21,2121
	idle_sessions "$IDLE" $C $S 198.51.100.20:2121 idle
	stop_ftpgate
fi

echo
"$FTPLOAD" report "$RESULTS" | tee "$OUT/table.txt"
[ -f "$OUT/idle.json" ] && echo "idle sessions: $(cat "$OUT/idle.json")" | tee -a "$OUT/table.txt"
[ -f "$OUT/nat-idle.json" ] && echo "idle translated sessions: $(cat "$OUT/nat-idle.json")" | tee -a "$OUT/table.txt"
echo
echo "results: $OUT/table.txt, $RESULTS"
