#!/usr/bin/env bash
# make demo: ftpgate's job on the lab, told for a student. A client and a
# server with a default-drop gateway between them; FTP without ftpgate
# (data connections die at the gateway), then with it, in both modes and
# both families; a bounce the server accepts and ftpgate refuses; the
# table and the HTML report of the demo's own capture.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
FTPGATE=${FTPGATE:-$HERE/../bin/ftpgate}
export LAB=ftpgdemo
export LAB_DIR=/tmp/ftpgdemo-lab
C=$LAB-client G=$LAB-gw
REPORT=${DEMO_REPORT:-/tmp/ftpgate-demo-report.html}

[ "$(id -u)" = 0 ] || { echo "make demo needs root (network namespaces, nftables, packet capture)" >&2; exit 1; }
LOG=$(mktemp /tmp/ftpgate-demo.XXXXXX.log)
PCAP=$(mktemp /tmp/ftpgate-demo.XXXXXX.pcap)
pid="" dump=""
cleanup() {
	[ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
	[ -n "$dump" ] && kill "$dump" 2>/dev/null && wait "$dump" 2>/dev/null
	"$HERE/lab.sh" down
}
trap cleanup EXIT

bold() { printf '\n\033[1m%s\033[0m\n' "$*"; }
say() { printf '  %s\n' "$*"; }

# curl_words says what a curl exit status means for an FTP transfer.
curl_words() {
	case $1 in
	0) echo "the file arrived" ;;
	7) echo "curl could not connect" ;;
	8) echo "the data connection failed and curl's fallback got a reply it could not use (curl exit 8)" ;;
	12) echo "the server never connected back to curl's port (curl exit 12)" ;;
	13 | 14) echo "curl could not use the server's passive reply (curl exit $1)" ;;
	19) echo "the server could not open the data connection and refused the download (curl exit 19)" ;;
	25 | 30) echo "the server refused the client's PORT/EPRT (curl exit $1)" ;;
	28) echo "timed out: the data connection never got through (curl exit 28)" ;;
	*) echo "curl exit $1" ;;
	esac
}

modes=(
	"passive mode (the client connects)        PASV, IPv4|ftp://198.51.100.20/file.bin|--ftp-pasv --disable-epsv"
	"passive mode (the client connects)        EPSV, IPv4|ftp://198.51.100.20/file.bin|--ftp-pasv"
	"active mode (the server connects back)    PORT, IPv4|ftp://198.51.100.20/file.bin|--ftp-port - --disable-eprt"
	"active mode (the server connects back)    EPRT, IPv4|ftp://198.51.100.20/file.bin|--ftp-port -"
	"passive mode (the client connects)        EPSV, IPv6|ftp://[2001:db8:2::20]/file.bin|--ftp-pasv"
	"active mode (the server connects back)    EPRT, IPv6|ftp://[2001:db8:2::20]/file.bin|--ftp-port -"
	"passive mode, server on the gateway itself PASV, IPv4|ftp://192.0.2.1/file.bin|--ftp-pasv --disable-epsv"
)
transfers() {
	for m in "${modes[@]}"; do
		IFS='|' read -r name url flags <<<"$m"
		printf '  %-54s' "$name"
		rc=0
		# shellcheck disable=SC2086
		out=$(ip netns exec $C curl -s --max-time 6 --connect-timeout 3 -o /dev/null -w '%{size_download} bytes in %{time_total}s' $flags "$url" 2>/dev/null) || rc=$?
		if [ $rc = 0 ]; then
			echo "ok    $out"
		else
			echo "FAIL  $(curl_words $rc)"
		fi
	done
}

# decisions prints ftpgate's log lines about data channels in words
# (its JSON log's orig_h is the host that connects, resp_h:resp_p where).
decisions() {
	python3 -c '
import json, sys
for l in open(sys.argv[1]):
    try:
        r = json.loads(l)
    except ValueError:
        continue
    m, who, where = r.get("msg", ""), r.get("orig_h"), "%s:%s" % (r.get("resp_h"), r.get("resp_p"))
    if ":" in str(r.get("resp_h")):
        where = "[%s]:%s" % (r.get("resp_h"), r.get("resp_p"))
    mode = "passive" if r.get("command") in ("PASV", "EPSV", "LPSV") else "active"
    if m == "channel open":
        print("  OPENED   %-5s %-7s %s may connect to %s, once (%s)" % (r["command"], mode, who, where, r.get("reason")))
    elif m == "channel refused":
        print("  REFUSED  %-5s %-7s %s may NOT connect to %s: %s" % (r["command"], mode, who, where, r.get("reason")))
    elif m == "channel closed":
        print("  CLOSED   %-5s %-7s %s -> %s: %s" % (r["command"], mode, who, where, r.get("reason")))
' "$LOG"
}

bold "1. The lab: client 192.0.2.10 / 2001:db8:1::10 -- gateway -- server 198.51.100.20 / 2001:db8:2::20 (vsftpd)"
"$HERE/lab.sh" up
say "The gateway's ruleset drops everything forwarded except FTP control connections (port 21),"
say "what is already established, and the one line for ftpgate (its ct mark):"
ip netns exec $G nft list chain inet filter forward | sed 's/^/    /'
say ""
say "FTP moves every file on a separate data connection. In passive mode the server"
say "announces a port and the client connects to it; in active mode the client announces"
say "a port and the server connects back. Either way the firewall has not been told."

bold "2. Without ftpgate: the control connections work, every data connection is dropped"
transfers

bold "3. With ftpgate on the gateway:  ftpgate run   (capturing the gateway's server side for the report)"
ip netns exec $G tcpdump -q -s 400 -U -w "$PCAP" -i "$LAB-g1" tcp 2>/dev/null &
dump=$!
ip netns exec $G "$FTPGATE" run --log-format json --control-ports 21,2133 >"$LOG" 2>&1 &
pid=$!
for _ in $(seq 50); do grep -q '"ftpgate running"' "$LOG" && break; sleep 0.1; done
grep -q '"ftpgate running"' "$LOG" && say "ftpgate is running: it reads every announcement and opens exactly that one connection"
sleep 0.5
transfers

bold "4. What ftpgate read, opened and closed (its log, in words)"
sleep 2.5 # close lines wait up to 2 s for the kernel's usage reports
decisions

bold "5. A session that negotiates but does not connect: the pinhole in the kernel"
ip netns exec $C python3 "$HERE/ftpclient.py" hold 198.51.100.20 PASV 2 | sed 's/^/  server: /' &
hold=$!
sleep 1
say "nft list set inet ftpgate ftp_data_pinholes_v4 (client . server . port, used once, then gone):"
ip netns exec $G nft list table inet ftpgate 2>/dev/null | sed -n '/set ftp_data_pinholes_v4/,/}/p' | sed 's/^/    /'
wait $hold 2>/dev/null || true
sleep 2.5

bold "6. A bounce: the client asks the server to connect to another host (192.0.2.11:8080)"
# A victim next to the client, listening: only the firewall stands between.
ip -n $C addr add 192.0.2.11/24 dev $LAB-c0
ip netns exec $C python3 -c 'import socket,time; s=socket.create_server(("192.0.2.11",8080)); time.sleep(30)' &
victim=$!
sleep 0.3
drops() { ip netns exec $G nft list counter inet filter dropped_syn | sed -n 's/.*packets \([0-9]*\).*/\1/p'; }
before=$(drops)
say "This vsftpd (port 2133, port_promiscuous=YES, as old servers were) accepts any PORT:"
ip netns exec $C python3 "$HERE/ftpclient.py" raw 198.51.100.20:2133 0 "PORT 192,0,2,11,31,144" "LIST" | sed 's/^/  server: /'
sleep 0.3
kill $victim 2>/dev/null; wait $victim 2>/dev/null || true
line=$(decisions | grep REFUSED | grep 192.0.2.11 | tail -1)
if [ -n "$line" ]; then
	echo "$line"
	say "The server said 200 and tried to connect to 192.0.2.11:8080, which was listening;"
	say "ftpgate, not the server, refused: it opened nothing, so the gateway dropped the"
	say "server's connection ($(( $(drops) - before )) SYNs counted by the gateway's drop counter) and the server gave up (425)."
else
	say "ftpgate did NOT refuse the bounce"
	exit 1
fi

bold "7. Stopping ftpgate (SIGTERM) removes its table"
kill -TERM "$pid"; wait "$pid" && say "ftpgate exited with status 0"
pid=""
if ip netns exec $G nft list tables | grep -q ftpgate; then say "table inet ftpgate is STILL there"; exit 1; fi
say "nft list tables on the gateway:"; ip netns exec $G nft list tables | sed 's/^/    /'
kill "$dump" 2>/dev/null; wait "$dump" 2>/dev/null || true
dump=""

bold "8. The demo's own capture, read again by ftpgate analyze (who connects to whom)"
"$FTPGATE" analyze --format text --control-ports 21,2133 "$PCAP" 2>/dev/null | sed 's/^/  /'
say ""
say "MODE says who connects: passive, the client; active, the server. CONNECTS FROM and TO"
say "are that connection; VERDICT is what ftpgate decides (analyze opens nothing: 'would open')."
"$FTPGATE" analyze --format json --control-ports 21,2133 --html "$REPORT" "$PCAP" >/dev/null 2>&1
bold "Done. The full log: $LOG   the capture: $PCAP"
bold "The report of this demo, a diagram per session (open it in a browser): $REPORT"
