#!/usr/bin/env bash
# make demo: ftpgate's main job on the lab. A client and a server with a
# default-drop gateway between them; first FTP without ftpgate (data
# connections die at the gateway), then with it, in every mode and family.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
FTPGATE=${FTPGATE:-$HERE/../bin/ftpgate}
export LAB=ftpgdemo
export LAB_DIR=/tmp/ftpgdemo-lab
C=$LAB-client G=$LAB-gw

[ "$(id -u)" = 0 ] || { echo "make demo needs root (network namespaces, nftables, packet capture)" >&2; exit 1; }
LOG=$(mktemp /tmp/ftpgate-demo.XXXXXX.log)
pid=""
cleanup() {
	[ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
	"$HERE/lab.sh" down
}
trap cleanup EXIT

bold() { printf '\n\033[1m%s\033[0m\n' "$*"; }
step() { printf '  %-34s' "$1"; }

bold "1. The lab: client 192.0.2.10 / 2001:db8:1::10 — gateway — server 198.51.100.20 / 2001:db8:2::20 (vsftpd)"
"$HERE/lab.sh" up
echo "  gateway ruleset (default drop, FTP control allowed, plus the one line for ftpgate):"
ip netns exec $G nft list chain inet filter forward | sed 's/^/    /'

modes=(
	"PASV   IPv4|ftp://198.51.100.20/file.bin|--ftp-pasv --disable-epsv"
	"EPSV   IPv4|ftp://198.51.100.20/file.bin|--ftp-pasv"
	"PORT   IPv4|ftp://198.51.100.20/file.bin|--ftp-port - --disable-eprt"
	"EPRT   IPv4|ftp://198.51.100.20/file.bin|--ftp-port -"
	"EPSV   IPv6|ftp://[2001:db8:2::20]/file.bin|--ftp-pasv"
	"EPRT   IPv6|ftp://[2001:db8:2::20]/file.bin|--ftp-port -"
	"PASV   server on the gateway|ftp://192.0.2.1/file.bin|--ftp-pasv --disable-epsv"
)
transfers() {
	for m in "${modes[@]}"; do
		IFS='|' read -r name url flags <<<"$m"
		step "curl $name"
		# shellcheck disable=SC2086
		if out=$(ip netns exec $C curl -s --max-time 6 --connect-timeout 3 -o /dev/null -w '%{size_download} bytes in %{time_total}s' $flags "$url" 2>/dev/null); then
			echo "ok    $out"
		else
			echo "FAIL  curl exit $? (${out#* bytes in }): the data connection never got through"
		fi
	done
}

bold "2. Without ftpgate: the control connections work, every data connection is dropped"
transfers

bold "3. With ftpgate on the gateway:  ftpgate run"
ip netns exec $G "$FTPGATE" run >"$LOG" 2>&1 &
pid=$!
for _ in $(seq 50); do grep -q "ftpgate running" "$LOG" && break; sleep 0.1; done
grep "ftpgate running" "$LOG" | sed 's/^/  /'
transfers

bold "4. What ftpgate negotiated, opened and closed (its log)"
sleep 2.5 # close log lines wait up to 2s for the kernel's usage reports
grep -E 'channel (open|closed|refused)' "$LOG" | sed -E 's/^time=[^ ]+ level=[A-Z]+ //; s/^/  /'

bold "5. A session that negotiates but does not connect: the pinhole in the kernel"
ip netns exec $C python3 "$HERE/ftpclient.py" hold 198.51.100.20 PASV 2 | sed 's/^/  server: /' &
sleep 1
ip netns exec $G nft list table inet ftpgate 2>/dev/null | sed -n '/set ftp_data_pinholes_v4/,/}/p' | sed 's/^/  /'
wait %2 2>/dev/null || true
sleep 2.5
grep -E 'channel (open|closed)' "$LOG" | tail -2 | sed -E 's/^time=[^ ]+ level=[A-Z]+ //; s/^/  /'

bold "6. A bounce attempt (PORT to the server's own port 80) is refused and logged"
ip netns exec $C python3 "$HERE/ftpclient.py" raw 198.51.100.20 0 "PORT 198,51,100,20,0,80" | sed 's/^/  server: /'
sleep 0.3
grep 'channel refused' "$LOG" | tail -1 | sed -E 's/^time=[^ ]+ level=[A-Z]+ //; s/^/  /'

bold "7. Stopping ftpgate (SIGTERM) removes its table"
kill -TERM "$pid"; wait "$pid" && echo "  ftpgate exited with status 0"
pid=""
if ip netns exec $G nft list tables | grep -q ftpgate; then echo "  table inet ftpgate is STILL there"; exit 1; fi
echo "  nft list tables on the gateway:"; ip netns exec $G nft list tables | sed 's/^/    /'
bold "Done. The full log was in $LOG"
