#!/usr/bin/env bash
# The ftpgate NAT lab: a gateway between a LAN behind masquerade, a DMZ
# behind a port forward, and the "internet", all on documentation
# addresses in network namespaces. The internet host has no route to the
# LAN or the DMZ: an unrewritten private address fails there.
#
#   lan   192.0.2.2       2001:db8:1::2   (client)
#     |   192.0.2.1       2001:db8:1::1   gw "lan"
#   gw    203.0.113.1     2001:db8:3::1   gw "wan"  --- inet 203.0.113.10  2001:db8:3::10 (server, clients)
#     |   198.51.100.1    2001:db8:2::1   gw "dmz"
#   dmz   198.51.100.2    2001:db8:2::2   (servers: 21, 2121; 2122 with pasv_address)
#
# The gateway's NAT is written as an admin writes it: masquerade out of
# wan, and a port forward of 21, 2121 and 2122 to the DMZ server (and of
# the hostile tests' ports, and a DMZ service on 8080).
#
# Usage: natlab.sh up | down | ruleset ftpgate|kernel|none | ns NAME | dir
set -euo pipefail

LAB=${LAB:-ftpn}
L=$LAB-lan G=$LAB-gw I=$LAB-inet D=$LAB-dmz
DIR=${LAB_DIR:-/tmp/$LAB-natlab}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

down() {
	for pid in "$DIR"/vsftpd-*.pid; do
		if [ -f "$pid" ]; then kill "$(cat "$pid")" 2>/dev/null || true; fi
	done
	for ns in $L $G $I $D; do
		ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true
		ip netns del "$ns" 2>/dev/null || true
	done
	rm -rf "$DIR"
}

. "$HERE/vsftpd.sh"

serve() { # $1 = namespace, $2 = name, $3 = port, then extra settings
	local ns=$1 name=$2 port=$3
	shift 3
	vsftpd_conf "$name" listen_port="$port" "$@" >"$DIR/vsftpd-$name.conf"
	nsx "$ns" vsftpd "$DIR/vsftpd-$name.conf" >"$DIR/vsftpd-$name.out" 2>&1 &
	echo $! >"$DIR/vsftpd-$name.pid"
	for _ in $(seq 50); do
		nsx "$ns" ss -ltn 2>/dev/null | grep -q ":$port " && return
		sleep 0.1
	done
	echo "vsftpd $name did not start:" >&2
	cat "$DIR/vsftpd-$name.out" >&2
	exit 1
}

up() {
	down
	mkdir -p "$DIR/ftproot" "$DIR/empty"
	chmod 755 "$DIR" "$DIR/ftproot" "$DIR/empty"
	head -c 262144 /dev/urandom >"$DIR/ftproot/file.bin"
	: >"$DIR/ftproot/empty.txt"
	chmod 644 "$DIR/ftproot/"*
	for ns in $L $G $I $D; do
		ip netns add "$ns"
		nsx "$ns" ip link set lo up
		nsx "$ns" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
	done
	ip link add "$LAB-l0" netns "$L" type veth peer name lan netns "$G"
	ip link add "$LAB-i0" netns "$I" type veth peer name wan netns "$G"
	ip link add "$LAB-d0" netns "$D" type veth peer name dmz netns "$G"
	nsx "$L" ip addr add 192.0.2.2/24 dev "$LAB-l0"
	nsx "$L" ip addr add 2001:db8:1::2/64 dev "$LAB-l0" nodad
	nsx "$I" ip addr add 203.0.113.10/24 dev "$LAB-i0"
	nsx "$I" ip addr add 2001:db8:3::10/64 dev "$LAB-i0" nodad
	nsx "$D" ip addr add 198.51.100.2/24 dev "$LAB-d0"
	nsx "$D" ip addr add 2001:db8:2::2/64 dev "$LAB-d0" nodad
	nsx "$G" ip addr add 192.0.2.1/24 dev lan
	nsx "$G" ip addr add 2001:db8:1::1/64 dev lan nodad
	nsx "$G" ip addr add 203.0.113.1/24 dev wan
	nsx "$G" ip addr add 2001:db8:3::1/64 dev wan nodad
	nsx "$G" ip addr add 198.51.100.1/24 dev dmz
	nsx "$G" ip addr add 2001:db8:2::1/64 dev dmz nodad
	for l in "$L:$LAB-l0" "$I:$LAB-i0" "$D:$LAB-d0" "$G:lan" "$G:wan" "$G:dmz"; do nsx "${l%%:*}" ip link set "${l#*:}" up; done
	# The LAN and the DMZ route through the gateway; the internet host
	# only knows its own network.
	nsx "$L" ip route add default via 192.0.2.1
	nsx "$L" ip -6 route add default via 2001:db8:1::1
	nsx "$D" ip route add default via 198.51.100.1
	nsx "$D" ip -6 route add default via 2001:db8:2::1
	nsx "$G" sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
	serve "$I" inet 21
	serve "$D" dmz 21
	serve "$D" dmz-2121 2121
	# vsftpd announces 0,0,0,0 for pasv_address on an IPv6 socket: IPv4 only.
	serve "$D" dmz-2122 2122 pasv_address=203.0.113.1 listen=YES listen_ipv6=NO
	# An FTPS server behind the port forward, announcing the public
	# address (inside TLS), on a passive range of its own.
	openssl req -x509 -newkey rsa:2048 -nodes -keyout "$DIR/ftps.key" -out "$DIR/ftps.crt" \
		-days 2 -subj "/CN=203.0.113.1" >/dev/null 2>&1
	chmod 600 "$DIR/ftps.key"
	serve "$D" dmz-2141 2141 pasv_address=203.0.113.1 listen=YES listen_ipv6=NO ssl_enable=YES allow_anon_ssl=YES \
		force_anon_logins_ssl=YES force_anon_data_ssl=YES rsa_cert_file="$DIR/ftps.crt" rsa_private_key_file="$DIR/ftps.key" \
		require_ssl_reuse=NO ssl_ciphers=HIGH pasv_min_port=41000 pasv_max_port=41999
	ruleset ftpgate
}

# ruleset loads the gateway's NAT and a default-drop filter with
#   ftpgate: the one documented line for ftpgate's mark
#   kernel:  the kernel's FTP helper (nf_conntrack_ftp, nf_nat_ftp) instead
#   none:    neither: FTP data connections must fail
ruleset() {
	local mode=${1:-ftpgate} admit="" helper="" helpobj=""
	# The hostile tests' scripted servers in the DMZ, and a service of the
	# DMZ's on 8080 that the admin forwards (its port must stay its own).
	local hostile="2150, 2151, 2152, 2153, 2990, 8080"
	case $mode in
	ftpgate) admit='ct mark & 0x01000000 == 0x01000000 accept' ;;
	kernel)
		# A distribution kernel has the helpers as modules: the ct helper
		# object loads nf_conntrack_ftp, but nothing loads nf_nat_ftp,
		# without which the helper tracks PORT but never rewrites it
		# (Debian 12's 6.1 in test/vm: every LAN PORT refused by the
		# server). Built in on the host, where this does nothing.
		modprobe nf_nat_ftp 2>/dev/null || true
		helpobj='ct helper ftp-standard { type "ftp" protocol tcp; }'
		helper='tcp dport { 21, 2121, 2122 } ct state new ct helper set "ftp-standard"'
		admit='ct state related accept'
		;;
	none) ;;
	*) echo "ruleset: want ftpgate, kernel or none" >&2; exit 2 ;;
	esac
	nsx "$G" nft -f - <<EOF
flush ruleset
table inet nat {
	chain dstnat {
		type nat hook prerouting priority dstnat;
		iifname "wan" ip daddr 203.0.113.1 tcp dport { 21, 2121, 2122, 2141, $hostile } dnat ip to 198.51.100.2
		iifname "wan" ip6 daddr 2001:db8:3::1 tcp dport { 21, 2121, 2122, $hostile } dnat ip6 to 2001:db8:2::2
	}
	chain srcnat {
		type nat hook postrouting priority srcnat;
		oifname "wan" masquerade
	}
}
table inet filter {
	$helpobj
	chain prerouting {
		type filter hook prerouting priority filter; policy accept;
		tcp dport { 21, 2121, 2122 } tcp flags syn / syn,ack counter name control_syn
		$helper
	}
	chain forward {
		type filter hook forward priority filter; policy drop;
		ct state established accept
		$admit
		tcp dport { 21, 2121, 2122, 2141, $hostile } ct state new accept
		meta l4proto { icmp, ipv6-icmp } accept
		tcp flags syn / syn,ack counter name dropped_syn
	}
	chain input {
		type filter hook input priority filter; policy drop;
		iif lo accept
		ct state established accept
		$admit
		meta l4proto { icmp, ipv6-icmp } accept
		tcp flags syn / syn,ack counter name dropped_syn_input
	}
	counter dropped_syn { }
	counter dropped_syn_input { }
	counter control_syn { }
}
EOF
}

# gw_ipv6 off|on: the gateway as an IPv4-only box (disable_ipv6 on all of
# its interfaces, which drops their IPv6 addresses), and back as up made it.
gw_ipv6() {
	case $1 in
	off) nsx "$G" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 \
		net.ipv6.conf.lo.disable_ipv6=1 net.ipv6.conf.lan.disable_ipv6=1 net.ipv6.conf.wan.disable_ipv6=1 \
		net.ipv6.conf.dmz.disable_ipv6=1 ;;
	on)
		nsx "$G" sysctl -qw net.ipv6.conf.all.disable_ipv6=0 net.ipv6.conf.default.disable_ipv6=0 \
			net.ipv6.conf.lo.disable_ipv6=0 net.ipv6.conf.lan.disable_ipv6=0 net.ipv6.conf.wan.disable_ipv6=0 \
			net.ipv6.conf.dmz.disable_ipv6=0
		nsx "$G" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.all.forwarding=1
		nsx "$G" ip addr replace 2001:db8:1::1/64 dev lan nodad
		nsx "$G" ip addr replace 2001:db8:3::1/64 dev wan nodad
		nsx "$G" ip addr replace 2001:db8:2::1/64 dev dmz nodad
		;;
	*) echo "gw-ipv6 off|on" >&2; exit 2 ;;
	esac
}

case ${1:-} in
up) up ;;
gw-ipv6) gw_ipv6 "${2:-}" ;;
down) down ;;
ruleset) ruleset "${2:-ftpgate}" ;;
ns) case ${2:-} in lan) echo "$L" ;; gw | gateway) echo "$G" ;; inet) echo "$I" ;; dmz) echo "$D" ;; *) exit 2 ;; esac ;;
dir) echo "$DIR" ;;
*) echo "usage: $0 up | down | ruleset ftpgate|kernel|none | ns lan|gw|inet|dmz | dir" >&2; exit 2 ;;
esac
