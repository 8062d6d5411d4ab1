# Shared by lab.sh and natlab.sh: the vsftpd configuration of the labs'
# servers, anonymous and read-only, serving $DIR/ftproot.

vsftpd_conf() { # $1 = instance name, then extra settings
	local name=$1
	shift
	cat <<EOF
listen=NO
listen_ipv6=YES
background=NO
anonymous_enable=YES
local_enable=NO
write_enable=NO
anon_root=$DIR/ftproot
no_anon_password=YES
pasv_enable=YES
pasv_min_port=40000
pasv_max_port=40999
port_enable=YES
connect_from_port_20=NO
connect_timeout=3
data_connection_timeout=10
accept_timeout=10
seccomp_sandbox=NO
isolate_network=NO
isolate=NO
secure_chroot_dir=$DIR/empty
xferlog_enable=NO
dual_log_enable=NO
vsftpd_log_file=$DIR/vsftpd-$name.log
max_clients=0
max_per_ip=0
EOF
	printf '%s\n' "$@"
}
