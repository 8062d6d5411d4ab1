#!/bin/bash
# test/vm/run.sh runs a command as root inside a qemu VM that boots Debian 12's
# distribution kernel (linux-image-amd64, 6.1.x) on the host's own root
# filesystem: "/" is shared read-only over 9p under a tmpfs overlay (writes are
# thrown away), the guest kernel's modules appear at /lib/modules/$(uname -r)
# and load with modprobe (auto-loading too). The guest has no network device.
#
#   test/vm/run.sh [--mem 2G] [--cpus 2] [--timeout SECONDS] [--accel auto|kvm|tcg]
#                  [--env NAME=VALUE]... -- DIR COMMAND [ARGS...]
#   test/vm/run.sh --prepare
#
# The command runs in DIR, a host path (not under /tmp, /run, /dev, /proc or
# /sys, which the guest has of its own), with stdin from /dev/null,
# HOME=/root, FTPGATE_VM=1,
# PATH=/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# and each --env given. Its stdout and stderr go to this script's stdout as
# they come; the kernel's console of the last run is kept in $CACHE/console.log.
#
# Exit status: the command's; 125 when the VM did not boot, the command did
# not finish within --timeout (default 3600 s) or its status did not come
# back; 77 with "skipping: ..." when qemu or the kernel cannot be had here.
# A boot that has not reached the command after $FTPGATE_VM_BOOT_TIMEOUT
# (180 s), or that died before, is tried once more. The last line, on
# stderr, sums up:
#   vm: kernel 6.1.0-NN-amd64 (TCG), booted in N s, command exited R (M s in all)
#
# --prepare only fetches the kernel (apt-get download of the package that
# linux-image-amd64 depends on now; never installed), extracts it, runs
# depmod on the copy, unpacks its vmlinux and builds the initramfs. A run
# without --prepare does that only when the cache holds no kernel yet.
# FTPGATE_VM_KERNEL_PKG=linux-image-... uses that package instead.
# FTPGATE_VM_SUITE=bullseye (any Debian suite) takes the kernel
# linux-image-amd64 of that suite depends on, from deb.debian.org through
# apt lists of its own in the cache (signed by debian-archive-keyring); the
# host's apt configuration is not touched.
# The cache is $FTPGATE_VM_CACHE, default /var/cache/ftpgate-vm. Missing host
# packages (qemu-system-x86, busybox-static, kmod, xz-utils) are installed
# with apt-get when running as root. FTPGATE_VM_CPU overrides qemu's -cpu.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${FTPGATE_VM_CACHE:-/var/cache/ftpgate-vm}
QEMU=qemu-system-x86_64
MEM=2G CPUS=2 TIMEOUT=3600 ACCEL=auto PREPARE=0
ENVS=()

say() { echo "vm: $*" >&2; }
skip() { echo "skipping: $*" >&2; exit 77; }
die() { say "$*"; exit 125; }
usage() { sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2; exit "${1:-2}"; }

while [ $# -gt 0 ]; do
	case $1 in
	--mem) MEM=${2:?}; shift 2 ;;
	--cpus) CPUS=${2:?}; shift 2 ;;
	--timeout) TIMEOUT=${2:?}; shift 2 ;;
	--accel) ACCEL=${2:?}; shift 2 ;;
	--env)
		case ${2:-} in [A-Za-z_]*=*) ;; *) die "--env wants NAME=VALUE, not '${2:-}'" ;; esac
		ENVS+=("$2"); shift 2 ;;
	--prepare) PREPARE=1; shift ;;
	-h|--help) usage 0 ;;
	--) shift; break ;;
	*) usage ;;
	esac
done
if [ "$PREPARE" = 0 ]; then
	[ $# -ge 2 ] || usage
	DIR=$(realpath -e -- "$1" 2>/dev/null) && [ -d "$DIR" ] || die "no such directory: $1"
	shift
	case $DIR/ in
	/tmp/*|/run/*|/dev/*|/proc/*|/sys/*)
		die "$DIR is hidden in the guest, which has its own /tmp, /run, /dev, /proc and /sys" ;;
	esac
fi
case $ACCEL in auto|kvm|tcg) ;; *) die "--accel wants auto, kvm or tcg" ;; esac

# host tools: command, then the Debian package that has it.
need_tools() {
	local missing=() t
	for t in "$QEMU:qemu-system-x86" "xz:xz-utils" "depmod:kmod" "modprobe:kmod" "dpkg-deb:dpkg" "apt-get:apt"; do
		PATH=$PATH:/usr/sbin:/sbin command -v "${t%%:*}" >/dev/null 2>&1 || missing+=("${t#*:}")
	done
	# the initramfs needs a static busybox (busybox-static, not busybox).
	if ! [ -x /bin/busybox ] || ! { LC_ALL=C ldd /bin/busybox 2>&1 || :; } | grep -q 'not a dynamic'; then
		missing+=(busybox-static)
	fi
	[ ${#missing[@]} = 0 ] && return
	missing=($(printf '%s\n' "${missing[@]}" | sort -u))
	[ "$(id -u)" = 0 ] || skip "missing ${missing[*]} (run as root to have them installed)"
	say "installing ${missing[*]} with apt-get"
	{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
		>"${TMPDIR:-/tmp}/ftpgate-vm-apt.log" 2>&1 ||
		skip "apt-get install ${missing[*]} failed (see ${TMPDIR:-/tmp}/ftpgate-vm-apt.log)"
}
export PATH=$PATH:/usr/sbin:/sbin

# APT is the apt options: the host's configuration, or with
# FTPGATE_VM_SUITE lists of that suite's own in the cache.
SUITE=${FTPGATE_VM_SUITE:-}
APT=()
CURRENT=$CACHE/current
if [ -n "$SUITE" ]; then
	case $SUITE in *[!a-z-]*) die "FTPGATE_VM_SUITE wants a Debian suite name, not '$SUITE'" ;; esac
	A=$CACHE/apt-$SUITE
	APT=(-o "Dir::Etc::SourceList=$A/sources.list" -o Dir::Etc::SourceParts=/nonexistent
		-o "Dir::State::Lists=$A/lists" -o "Dir::Cache=$A/cache" -o "Dir::State::status=$A/status")
	CURRENT=$CACHE/current-$SUITE
fi
apt_suite_setup() {
	[ -n "$SUITE" ] || return 0
	mkdir -p "$A/lists/partial" "$A/cache/archives/partial" && touch "$A/status" &&
		echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $SUITE main" >"$A/sources.list"
}

# kernel_pkg names the kernel package linux-image-amd64 depends on now.
kernel_pkg() {
	local p
	apt_suite_setup || return
	p=$(apt-cache "${APT[@]}" depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -1)
	if [ -z "$p" ]; then
		apt-get "${APT[@]}" update -qq >/dev/null 2>&1
		p=$(apt-cache "${APT[@]}" depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -1)
	fi
	echo "$p"
}

# initramfs_key changes whenever what goes into the initramfs does.
INITRD_MODULES="virtio_pci 9pnet_virtio 9p overlay virtio_console"
initramfs_key() { cat "$HERE/init" /bin/busybox <(echo "$INITRD_MODULES") | sha256sum | cut -c1-16; }

# build_initramfs KVER: busybox, init and the modules the root mount needs,
# in modules.dep order (they are plain .ko in Debian 12's package).
build_initramfs() {
	local kver=$1 tree=$CACHE/$1 tmp m f
	tmp=$(mktemp -d "$CACHE/.initramfs.XXXXXX") || return 1
	mkdir -p "$tmp/bin" "$tmp/modules"
	cp /bin/busybox "$tmp/bin/busybox" && cp "$HERE/init" "$tmp/init" && chmod 0755 "$tmp/init" || return 1
	for m in $INITRD_MODULES; do
		modprobe -d "$tree" -S "$kver" --show-depends "$m" || { echo "no module $m in $kver" >&2; return 1; }
	done | awk '$1 == "insmod" { print $2 }' | awk '!seen[$0]++' | while read -r f; do
		case $f in
		*.ko) cp "$f" "$tmp/modules/" ;;
		*.ko.xz) xz -dc "$f" >"$tmp/modules/$(basename "${f%.xz}")" ;;
		*.ko.zst) zstd -qdc "$f" >"$tmp/modules/$(basename "${f%.zst}")" ;;
		*) echo "cannot handle $f" >&2; exit 1 ;;
		esac
		basename "${f%.*}" | sed 's/\.ko$//; s/$/.ko/' >>"$tmp/modules.list"
	done || return 1
	(cd "$tmp" && find . -mindepth 1 | busybox cpio -o -H newc 2>/dev/null) | gzip -1 >"$tree/initramfs.tmp" &&
		mv "$tree/initramfs.tmp" "$tree/initramfs.cpio.gz" && initramfs_key >"$tree/initramfs.key"
	local rc=$?
	rm -rf "$tmp"
	return $rc
}

# extract_vmlinux BZIMAGE OUT: the kernel's ELF image out of its xz (6.1) or
# zstd (6.12) payload. qemu boots it through its PVH entry point
# (CONFIG_PVH=y), which skips the BIOS's real-mode boot and the in-guest
# decompression: about 5 s less under TCG.
extract_vmlinux() {
	local off magic dec
	grep -q '^CONFIG_PVH=y' "$(dirname "$1")/config-${1##*/vmlinuz-}" || return 1
	for magic in xz zstd; do
		case $magic in
		xz) off=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$1" | head -1 | cut -d: -f1); dec="xz -dc --single-stream" ;;
		zstd) off=$(LC_ALL=C grep -obUaP '\x28\xb5\x2f\xfd' "$1" | head -1 | cut -d: -f1); dec="zstd -dcq" ;;
		esac
		[ -n "$off" ] || continue
		command -v "${dec%% *}" >/dev/null || continue
		# zstd complains of the bytes after its frame; the ELF check below decides.
		{ tail -c +$((off + 1)) "$1" || :; } | $dec >"$2.tmp" 2>/dev/null
		if [ "$(head -c 4 "$2.tmp" | od -An -c | tr -d ' ')" = 177ELF ]; then
			mv "$2.tmp" "$2"
			return 0
		fi
	done
	rm -f "$2.tmp"
	return 1
}

# fetch_kernel PKG: download and extract PKG into $CACHE/<its version>, once.
fetch_kernel() {
	local pkg=$1 kver=${1#linux-image-} tree tmp deb
	tree=$CACHE/$kver
	[ -e "$tree/.ready" ] && return
	say "fetching $pkg into $CACHE"
	tmp=$(mktemp -d "$CACHE/.dl.XXXXXX")
	(cd "$tmp" && apt-get "${APT[@]}" download "$pkg" >download.log 2>&1) ||
		{ tail -3 "$tmp/download.log" >&2; rm -rf "$tmp"; skip "cannot download $pkg"; }
	deb=$(ls "$tmp"/*.deb)
	rm -rf "$tree"
	dpkg-deb -x "$deb" "$tmp/x" || { rm -rf "$tmp"; die "cannot extract $deb"; }
	[ -f "$tmp/x/boot/vmlinuz-$kver" ] && [ -d "$tmp/x/lib/modules/$kver" ] ||
		{ rm -rf "$tmp"; die "$pkg holds no vmlinuz-$kver or lib/modules/$kver"; }
	depmod -b "$tmp/x" "$kver" || { rm -rf "$tmp"; die "depmod failed on $kver"; }
	basename "$deb" >"$tmp/x/package"
	mv "$tmp/x" "$tree" && rm -rf "$tmp" && touch "$tree/.ready"
}

# prepare [force]: set KVER to a ready kernel tree with its initramfs. With
# FTPGATE_VM_KERNEL_PKG, that package's; otherwise the one $CACHE/current
# names, which force (--prepare) or an empty cache sets anew from
# linux-image-amd64.
prepare() {
	local pkg kver tree
	mkdir -p "$CACHE" || skip "cannot create the cache $CACHE"
	# the lock keeps two preparations apart; a user who may not write the
	# cache can still use what it holds.
	if { exec 9>>"$CACHE/.lock"; } 2>/dev/null; then flock 9; fi
	if [ -n "${FTPGATE_VM_KERNEL_PKG:-}" ]; then
		fetch_kernel "$FTPGATE_VM_KERNEL_PKG"
		kver=${FTPGATE_VM_KERNEL_PKG#linux-image-}
	else
		kver=$(cat "$CURRENT" 2>/dev/null)
		if [ "${1:-}" = force ] || [ -z "$kver" ] || [ ! -e "$CACHE/$kver/.ready" ]; then
			pkg=$(kernel_pkg)
			[ -n "$pkg" ] || skip "cannot find linux-image-amd64's kernel package with apt-cache"
			fetch_kernel "$pkg"
			kver=${pkg#linux-image-}
			echo "$kver" >"$CURRENT"
		fi
	fi
	tree=$CACHE/$kver
	if [ ! -e "$tree/vmlinux" ] && [ ! -e "$tree/no-vmlinux" ]; then
		extract_vmlinux "$tree/boot/vmlinuz-$kver" "$tree/vmlinux" || touch "$tree/no-vmlinux"
	fi
	if [ "$(cat "$tree/initramfs.key" 2>/dev/null)" != "$(initramfs_key)" ]; then
		build_initramfs "$kver" || die "cannot build the initramfs for $kver"
	fi
	KVER=$kver
	flock -u 9 2>/dev/null
}

need_tools
if [ "$PREPARE" = 1 ]; then
	prepare force
	say "kernel $KVER ready in $CACHE/$KVER ($(cat "$CACHE/$KVER/package"))"
	exit 0
fi
prepare
TREE=$CACHE/$KVER
KIMG=$TREE/vmlinux
[ -e "$KIMG" ] || KIMG=$TREE/boot/vmlinuz-$KVER

# cpu_for ACCEL: the CPU model (FTPGATE_VM_CPU overrides it).
cpu_for() {
	if [ -n "${FTPGATE_VM_CPU:-}" ]; then echo "$FTPGATE_VM_CPU"
	elif [ "$1" = kvm ]; then echo host,-arch-capabilities
	else echo max; fi
}
# accel_ok ACCEL: does the guest kernel run with it here? For TCG it is
# enough that qemu starts a machine. For KVM, /dev/kvm may open,
# the machine start and the firmware run, yet the kernel hang where it leaves
# real mode (so it is on this machine): the probe boots the kernel alone and
# waits up to 5 s for "Linux version" on the serial port. The answer is kept
# in the cache for this host kernel and qemu.
accel_ok() {
	local f i pid key
	if [ "$1" = tcg ]; then
		( echo quit | timeout 20 "$QEMU" -accel tcg -machine q35 -cpu "$(cpu_for tcg)" -m 64 \
			-display none -nodefaults -no-user-config -S -monitor stdio ) >/dev/null 2>&1
		return
	fi
	key="$1 $(uname -r) $("$QEMU" --version | head -1) $(cpu_for "$1")"
	if [ -f "$CACHE/accel-ok" ] && grep -qxF "$key" "$CACHE/accel-ok"; then return 0; fi
	if [ -f "$CACHE/accel-bad" ] && grep -qxF "$key" "$CACHE/accel-bad"; then return 1; fi
	f=$(mktemp "${TMPDIR:-/tmp}/ftpgate-vm-probe.XXXXXX") || return 1
	"$QEMU" -accel "$1" -machine q35 -cpu "$(cpu_for "$1")" -m 256 -display none \
		-nodefaults -no-user-config -monitor none -no-reboot -serial "file:$f" \
		-kernel "$KIMG" -append "console=ttyS0 earlyprintk=serial,ttyS0 panic=-1 rdinit=/none" \
		</dev/null >/dev/null 2>&1 &
	pid=$!
	for i in $(seq 50); do
		grep -q 'Linux version' "$f" 2>/dev/null && break
		kill -0 $pid 2>/dev/null || break
		sleep 0.1
	done
	kill $pid 2>/dev/null
	wait $pid 2>/dev/null
	if grep -q 'Linux version' "$f"; then i=ok; else i=bad; fi
	rm -f "$f"
	echo "$key" 2>/dev/null >>"$CACHE/accel-$i"
	[ $i = ok ]
}
case $ACCEL in
auto)
	if [ -r /dev/kvm ] && [ -w /dev/kvm ] && accel_ok kvm; then ACCEL=kvm
	else
		[ -e /dev/kvm ] && say "KVM does not work here; using TCG (slow)"
		ACCEL=tcg
	fi ;;
esac
accel_ok "$ACCEL" || skip "qemu cannot start a machine with -accel $ACCEL here"
CPU=$(cpu_for "$ACCEL")
ACCEL_NAME=$(echo "$ACCEL" | tr a-z A-Z)

RUN=$(mktemp -d "${TMPDIR:-/tmp}/ftpgate-vm.XXXXXX") || die "cannot create a run directory"
SHARE=$RUN/share
mkdir "$SHARE"
QEMU_PID= CAT=
# on any exit, qemu and the output copier go too, then the run directory.
cleanup() {
	[ -n "$QEMU_PID" ] && kill $QEMU_PID 2>/dev/null
	[ -n "$CAT" ] && kill $CAT 2>/dev/null
	rm -rf "$RUN"
}
trap cleanup EXIT
trap 'say "interrupted"; exit 125' INT TERM HUP
cp "$HERE/stage2" "$SHARE/stage2"
{
	printf 'export HOME=/root USER=root LOGNAME=root TERM=dumb LANG=C.UTF-8\n'
	printf 'export PATH=/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n'
	printf 'export FTPGATE_VM=1\n'
	for e in "${ENVS[@]}"; do printf 'export %q\n' "$e"; done
	printf 'cd %q || { echo "vm: cannot cd to %q in the guest"; exit 125; }\n' "$DIR" "$DIR"
	printf 'exec'
	printf ' %q' "$@"
	printf '\n'
} >"$SHARE/job"

# The command's output arrives on a fifo that cat copies to our stdout, so
# stdout may be a tty, a pipe, a file or a socket.
LOG=$RUN/console.log
BOOT_TIMEOUT=${FTPGATE_VM_BOOT_TIMEOUT:-180}

# boot_once: one VM run. The command's output arrives on a fifo that cat
# copies to our stdout, so stdout may be a tty, a pipe, a file or a socket.
# A watcher stamps the host time at which the guest is about to exec the
# command ($RUN/t1), and stops qemu after --timeout seconds ($RUN/timedout) or
# when the command has not started after $BOOT_TIMEOUT s ($RUN/noboot).
boot_once() {
	rm -f "$RUN/out" "$RUN/t1" "$RUN/timedout" "$RUN/noboot" "$SHARE/started" "$SHARE/rc" "$SHARE/finished"
	mkfifo "$RUN/out"
	cat "$RUN/out" &
	CAT=$!
	: >"$LOG"
	T0=$(date +%s.%N)
	"$QEMU" \
		-accel "$ACCEL" -machine q35 -cpu "$CPU" -smp "$CPUS" -m "$MEM" \
		-nodefaults -no-user-config -display none -no-reboot -monitor none -nic none \
		-kernel "$KIMG" -initrd "$TREE/initramfs.cpio.gz" \
		-append "console=ttyS0 loglevel=4 panic=-1 rdinit=/init mitigations=off tsc=reliable no_timer_check" \
		-serial "file:$LOG" \
		-virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap" \
		-virtfs "local,path=$TREE/lib/modules/$KVER,mount_tag=modules,security_model=none,readonly=on,multidevs=remap" \
		-virtfs "local,path=$SHARE,mount_tag=ftpgaterun,security_model=none" \
		-device virtio-serial-pci,id=vser \
		-chardev "file,id=out,path=$RUN/out,append=on" \
		-device virtserialport,bus=vser.0,chardev=out,name=ftpgate.out \
		</dev/null >>"$LOG" 2>&1 &
	QEMU_PID=$!
	(
		n=0
		while kill -0 $QEMU_PID 2>/dev/null; do
			if [ ! -e "$RUN/t1" ] && [ -e "$SHARE/started" ]; then date +%s.%N >"$RUN/t1"; fi
			sleep 0.1
			n=$((n + 1))
			stop=
			if [ $n -ge $((TIMEOUT * 10)) ]; then stop=timedout
			elif [ $n -ge $((BOOT_TIMEOUT * 10)) ] && [ ! -e "$RUN/t1" ]; then stop=noboot; fi
			if [ -n "$stop" ] && [ ! -e "$RUN/$stop" ]; then
				touch "$RUN/$stop"
				kill $QEMU_PID 2>/dev/null
				(sleep 5; kill -9 $QEMU_PID 2>/dev/null) &
			fi
		done
	) &
	WATCH=$!
	wait $QEMU_PID
	QRC=$?
	QEMU_PID=
	wait $WATCH
	# if qemu never opened the fifo, cat still waits to open it: let it go.
	kill -0 $CAT 2>/dev/null && timeout 2 sh -c ': >"$1"' sh "$RUN/out" 2>/dev/null
	wait $CAT
	CAT=
	cp "$LOG" "$CACHE/console.log" 2>/dev/null
	T2=$(date +%s.%N)
}

# A boot that fails before the command starts is tried once more: under
# TCG with two vCPUs a kernel now and then oopses on an int3 while it patches
# its own text (seen with 6.12, 1 boot in 10).
boot_once
if [ ! -e "$SHARE/started" ] && [ ! -e "$RUN/timedout" ]; then
	cp "$LOG" "$CACHE/console-failed-boot.log" 2>/dev/null
	if [ -e "$RUN/noboot" ]; then why="within $BOOT_TIMEOUT s"; else why="(qemu exited $QRC)"; fi
	say "the VM did not boot $why, log in $CACHE/console-failed-boot.log; once more"
	boot_once
fi

boot=?
[ -s "$RUN/t1" ] && boot=$(echo "$(cat "$RUN/t1") $T0" | awk '{ printf "%.1f", $1 - $2 }')
total=$(echo "$T2 $T0" | awk '{ printf "%.1f", $1 - $2 }')
if [ -s "$SHARE/rc" ]; then
	RC=$(cat "$SHARE/rc")
	say "kernel $KVER ($ACCEL_NAME), booted in $boot s, command exited $RC ($total s in all)"
	exit "$RC"
fi
if [ -e "$RUN/timedout" ]; then
	why="timed out after $TIMEOUT s"
elif [ -e "$SHARE/started" ]; then
	why="the guest stopped before the command's exit status came back (qemu exited $QRC)"
elif [ -e "$RUN/noboot" ]; then
	why="the VM did not boot within $BOOT_TIMEOUT s"
else
	why="the VM did not boot (qemu exited $QRC)"
fi
echo "--- last lines of the console log (all of it in $CACHE/console.log):" >&2
tail -n 25 "$LOG" >&2
say "kernel $KVER ($ACCEL_NAME), booted in $boot s, $why"
exit 125
