#!/usr/bin/env bash
# The ftpgate lab: three network namespaces joined by veth pairs, all on
# documentation addresses, with vsftpd on the server and on the gateway,
# and a default-drop nftables ruleset on the gateway as an admin writes it.
#
#   client 192.0.2.10      --- 192.0.2.1    gateway 198.51.100.1 --- 198.51.100.20     server
#          2001:db8:1::10  --- 2001:db8:1::1        2001:db8:2::1 --- 2001:db8:2::20
#
# Usage: lab.sh up | down | ruleset ftpgate|kernel|none | ns NAME
# LAB (default "ftpg") prefixes the namespace names so that runs can coexist.
set -euo pipefail

LAB=${LAB:-ftpg}
C=$LAB-client G=$LAB-gw S=$LAB-server
DIR=${LAB_DIR:-/tmp/$LAB-lab}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

down() {
	for pid in "$DIR"/vsftpd-*.pid; do
		if [ -f "$pid" ]; then kill "$(cat "$pid")" 2>/dev/null || true; fi
	done
	for ns in $C $G $S; do
		ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true
		ip netns del "$ns" 2>/dev/null || true
	done
	rm -rf "$DIR"
}

. "$HERE/vsftpd.sh"

up() {
	down
	mkdir -p "$DIR/ftproot" "$DIR/empty"
	chmod 755 "$DIR" "$DIR/ftproot" "$DIR/empty"
	head -c 262144 /dev/urandom >"$DIR/ftproot/file.bin"
	head -c 0 /dev/null >"$DIR/ftproot/empty.txt"
	chmod 644 "$DIR/ftproot/"*
	for ns in $C $G $S; do
		ip netns add "$ns"
		nsx "$ns" ip link set lo up
		nsx "$ns" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
	done
	ip link add "$LAB-c0" netns "$C" type veth peer name "$LAB-g0" netns "$G"
	ip link add "$LAB-s0" netns "$S" type veth peer name "$LAB-g1" netns "$G"
	nsx "$C" ip addr add 192.0.2.10/24 dev "$LAB-c0"
	nsx "$C" ip addr add 2001:db8:1::10/64 dev "$LAB-c0" nodad
	nsx "$G" ip addr add 192.0.2.1/24 dev "$LAB-g0"
	nsx "$G" ip addr add 2001:db8:1::1/64 dev "$LAB-g0" nodad
	nsx "$G" ip addr add 198.51.100.1/24 dev "$LAB-g1"
	nsx "$G" ip addr add 2001:db8:2::1/64 dev "$LAB-g1" nodad
	nsx "$S" ip addr add 198.51.100.20/24 dev "$LAB-s0"
	nsx "$S" ip addr add 2001:db8:2::20/64 dev "$LAB-s0" nodad
	for l in "$C:$LAB-c0" "$G:$LAB-g0" "$G:$LAB-g1" "$S:$LAB-s0"; do nsx "${l%%:*}" ip link set "${l#*:}" up; done
	nsx "$C" ip route add default via 192.0.2.1
	nsx "$C" ip -6 route add default via 2001:db8:1::1
	nsx "$S" ip route add default via 198.51.100.1
	nsx "$S" ip -6 route add default via 2001:db8:2::1
	nsx "$G" sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
	# Every data connection leaves a TIME_WAIT socket in the server for
	# 60 s (it closes first), and with vsftpd connecting from ephemeral
	# ports in active mode, each new connect() has to find a free port
	# among them. Measured: with ~20,000 left over from earlier runs, the
	# kernel helper's PORT rate fell from ~2,400/s to 300-700/s, so each
	# run slowed the next gateway down. A cap keeps runs independent.
	nsx "$S" sysctl -qw net.ipv4.tcp_max_tw_buckets=4096
	for ns in $S $G; do
		vsftpd_conf "$ns" >"$DIR/vsftpd-$ns.conf"
		nsx "$ns" vsftpd "$DIR/vsftpd-$ns.conf" >"$DIR/vsftpd-$ns.out" 2>&1 &
		echo $! >"$DIR/vsftpd-$ns.pid"
	done
	# FTPS servers, on a passive range of their own (41000-41999): vsftpd
	# with explicit TLS (AUTH TLS) on 2141 and implicit TLS on 990, and a
	# scripted server that also offers CCC on 2142, with a certificate
	# made here.
	openssl req -x509 -newkey rsa:2048 -nodes -keyout "$DIR/ftps.key" -out "$DIR/ftps.crt" \
		-days 2 -subj "/CN=198.51.100.20" >/dev/null 2>&1
	chmod 600 "$DIR/ftps.key"
	tls="ssl_enable=YES allow_anon_ssl=YES force_anon_logins_ssl=YES force_anon_data_ssl=YES
rsa_cert_file=$DIR/ftps.crt rsa_private_key_file=$DIR/ftps.key require_ssl_reuse=NO ssl_ciphers=HIGH
pasv_min_port=41000 pasv_max_port=41999"
	# shellcheck disable=SC2086
	vsftpd_conf "$S-2141" listen_port=2141 $tls >"$DIR/vsftpd-$S-2141.conf"
	# shellcheck disable=SC2086
	vsftpd_conf "$S-990" listen_port=990 implicit_ssl=YES $tls >"$DIR/vsftpd-$S-990.conf"
	for p in 2141 990; do
		nsx "$S" vsftpd "$DIR/vsftpd-$S-$p.conf" >"$DIR/vsftpd-$S-$p.out" 2>&1 &
		echo $! >"$DIR/vsftpd-$S-$p.pid"
	done
	nsx "$S" python3 "$HERE/ftpsserver.py" 198.51.100.20 2142 "$DIR/ftps.crt" "$DIR/ftps.key" "$DIR/ftproot" 41000 41999 \
		>"$DIR/ftpsserver.out" 2>&1 &
	echo $! >"$DIR/vsftpd-ftpsserver.pid"
	# A second server on port 2131 that refuses every PORT (550): the
	# hostile tests need a refusal ftpgate itself would not make.
	vsftpd_conf "$S-2131" listen_port=2131 port_enable=NO >"$DIR/vsftpd-$S-2131.conf"
	nsx "$S" vsftpd "$DIR/vsftpd-$S-2131.conf" >"$DIR/vsftpd-$S-2131.out" 2>&1 &
	echo $! >"$DIR/vsftpd-$S-2131.pid"
	# And one on 2133 that accepts a PORT to any address
	# (port_promiscuous=YES), as old servers did: the demo shows
	# ftpgate, not the server, refusing a bounce.
	vsftpd_conf "$S-2133" listen_port=2133 port_promiscuous=YES >"$DIR/vsftpd-$S-2133.conf"
	nsx "$S" vsftpd "$DIR/vsftpd-$S-2133.conf" >"$DIR/vsftpd-$S-2133.out" 2>&1 &
	echo $! >"$DIR/vsftpd-$S-2133.pid"
	ruleset ftpgate
	# Wait for both FTP servers to listen.
	for ns in $S $G; do
		for _ in $(seq 50); do
			nsx "$ns" ss -ltn 2>/dev/null | grep -q ':21 ' && break
			sleep 0.1
		done
		nsx "$ns" ss -ltn | grep -q ':21 ' || { echo "vsftpd in $ns did not start:" >&2; cat "$DIR/vsftpd-$ns.out" >&2; exit 1; }
	done
}

# ruleset loads the gateway's own ruleset: default drop for forwarded and
# input traffic, FTP control allowed, established traffic allowed, and
#   ftpgate: the one documented line for ftpgate's mark
#   kernel:  the kernel's FTP helper instead (the reference)
#   loose:   ftpgate's line, and FTP control traffic accepted without
#            looking at its state: forged control segments get through
#            the admin's own rules, so only ftpgate's checks stop them
#   none:    neither: FTP data connections must fail
ruleset() {
	local mode=${1:-ftpgate} admit="" helper="" helpobj="" loose=""
	# The control ports of the hostile tests' scripted servers.
	local hostile="2134, 2135, 2136, 2137, 2990"
	case $mode in
	ftpgate) admit='ct mark & 0x01000000 == 0x01000000 accept' ;;
	loose)
		admit='ct mark & 0x01000000 == 0x01000000 accept'
		loose='tcp dport { 21, 2131, 2132 } accept
		tcp sport { 21, 2131, 2132 } accept'
		;;
	kernel)
		helpobj='ct helper ftp-standard { type "ftp" protocol tcp; }'
		helper='tcp dport { 21, 2141, 2142, 990 } ct state new ct helper set "ftp-standard"'
		admit='ct state related accept'
		;;
	ftps-static)
		# What an admin does without a helper that sees FTPS: the
		# server's whole passive range open to everyone, permanently.
		loose='tcp dport 41000-41999 ct state new accept'
		;;
	none) ;;
	*) echo "ruleset: want ftpgate, loose, kernel, ftps-static or none" >&2; exit 2 ;;
	esac
	nsx "$G" nft -f - <<EOF
flush ruleset
table inet filter {
	$helpobj
	chain prerouting {
		type filter hook prerouting priority filter; policy accept;
		$helper
	}
	chain forward {
		type filter hook forward priority filter; policy drop;
		$loose
		ct state established,related accept
		$admit
		tcp dport { 21, 2131, 2132, 2133, 2141, 2142, 990, $hostile } ct state new accept
		icmp type echo-request accept
		icmpv6 type echo-request accept
		tcp flags syn / syn,ack counter name dropped_syn
	}
	chain input {
		type filter hook input priority filter; policy drop;
		iif lo accept
		ct state established,related accept
		$admit
		tcp dport 21 accept
		meta l4proto { icmp, ipv6-icmp } accept
		tcp flags syn / syn,ack counter name dropped_syn_input
	}
	counter dropped_syn { }
	counter dropped_syn_input { }
}
EOF
}

case ${1:-} in
up) up ;;
down) down ;;
ruleset) ruleset "${2:-ftpgate}" ;;
ns) case ${2:-} in client) echo "$C" ;; gw | gateway) echo "$G" ;; server) echo "$S" ;; *) exit 2 ;; esac ;;
dir) echo "$DIR" ;;
*) echo "usage: $0 up | down | ruleset ftpgate|loose|kernel|ftps-static|none | ns client|gw|server | dir" >&2; exit 2 ;;
esac
