#!/bin/bash
# test/vm/matrix.sh runs ftpgate's kernel and lab tests on other kernels than
# the host's: for each kernel it boots test/vm/run.sh and runs, inside,
# test/vm/guest.sh over test binaries built here on the host (building in the
# guest costs minutes under TCG), then prints one summary line per kernel:
#
#   vm-matrix: 6.1.0-57-amd64 (TCG): PASS  rules 41/41 capture 22/22 ... (612 s)
#
#   test/vm/matrix.sh [--timeout SECONDS] [--only PKG[,PKG]] [KERNEL...]
#
# KERNEL is "default" (the kernel Debian 12's linux-image-amd64 depends on,
# through the host's apt), a Debian suite (bullseye: that suite's
# linux-image-amd64, through apt lists of its own) or a kernel package
# (linux-image-6.12.117+deb12-amd64). Without any: default and bullseye
# (Debian 11's 5.10, older than ftpgate's minimum: there the tests check
# that ftpgate refuses to start, saying why), and each of
# $FTPGATE_VM_KERNELS (space-separated). --only runs some of the guest's
# packages (rules, capture, nat, lab). The binaries go to $FTPGATE_VM_OUT
# (default bin/vm in the checkout), the guests' output to bin/vm/guest-*.log.
# A checkout under /tmp (which the guest has of its own) is run from a copy
# in the VM cache.
#
# Exit status: 0 when every kernel passed, 1 when a test failed on one, 77
# with "skipping: ..." when no guest can run here (qemu missing and not
# installable, no kernel package), 125 when a VM broke (did not boot, timed
# out).
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
# GUEST is the checkout the guest runs in. The guest has its own /tmp,
# /run, /dev, /proc and /sys, so a checkout under one of them (a CI clone
# in /tmp) is copied, without .git, next to the kernel cache for the run.
GUEST=$ROOT
case $ROOT/ in
/tmp/*|/run/*|/dev/*|/proc/*|/sys/*)
	GUEST=${FTPGATE_VM_CACHE:-/var/cache/ftpgate-vm}/checkout.$$
	rm -rf "$GUEST" && mkdir -p "$GUEST" &&
		tar -C "$ROOT" --exclude=./.git --exclude=./bin -cf - . | tar -C "$GUEST" -xf - ||
		{ echo "vm-matrix: cannot copy $ROOT to $GUEST for the guest" >&2; exit 125; }
	trap 'rm -rf "$GUEST"' EXIT
	echo "vm-matrix: $ROOT is hidden in the guest; running a copy in $GUEST" >&2
	;;
esac
OUT=${FTPGATE_VM_OUT:-$GUEST/bin/vm}
LOGS=$ROOT/bin/vm # the guests' output, kept in the checkout itself
mkdir -p "$LOGS" || exit 125
TIMEOUT=3000 ONLY=
GO=${GO:-go}

while [ $# -gt 0 ]; do
	case $1 in
	--timeout) TIMEOUT=${2:?}; shift 2 ;;
	--only) ONLY=${2:?}; shift 2 ;;
	-h|--help) sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	-*) echo "matrix.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
	*) break ;;
	esac
done
KERNELS=("$@")
if [ ${#KERNELS[@]} = 0 ]; then
	KERNELS=(default bullseye ${FTPGATE_VM_KERNELS:-})
fi

say() { echo "vm-matrix: $*" >&2; }

# The test binaries, built once for every kernel.
mkdir -p "$OUT" || exit 125
say "building the test binaries into $OUT"
(
	cd "$ROOT" &&
	$GO build -o "$OUT/ftpgate" ./cmd/ftpgate &&
	$GO build -o "$OUT/forge" ./test/forge &&
	for p in rules capture nat; do $GO test -c -o "$OUT/$p.test" ./$p || exit 1; done &&
	$GO test -c -o "$OUT/lab.test" ./test
) || { say "building the test binaries failed"; exit 1; }

status=0
summary=()
for k in "${KERNELS[@]}"; do
	log=$LOGS/guest-${k}.log
	start=$(date +%s)
	# which kernel: the environment run.sh reads.
	case $k in
	default) kenv=() ;;
	linux-image-*) kenv=("FTPGATE_VM_KERNEL_PKG=$k") ;;
	*) kenv=("FTPGATE_VM_SUITE=$k") ;;
	esac
	env -u FTPGATE_VM_KERNEL_PKG -u FTPGATE_VM_SUITE "${kenv[@]}" "$HERE/run.sh" --prepare >/dev/null 2>"$LOGS/prepare.log"
	rc=$?
	if [ $rc = 77 ]; then
		cat "$LOGS/prepare.log" >&2
		summary+=("$k: skipped ($(grep -m1 '^skipping' "$LOGS/prepare.log"))")
		[ $status = 0 ] && status=77
		continue
	fi
	envs=(--env "FTPGATE_VM_OUT=$OUT" --env "FTPGATE_VM_ONLY=$ONLY" --env "FTPGATE_VM_CACHE=${FTPGATE_VM_CACHE:-/var/cache/ftpgate-vm}")
	env -u FTPGATE_VM_KERNEL_PKG -u FTPGATE_VM_SUITE "${kenv[@]}" "$HERE/run.sh" --mem 3G --cpus 2 --timeout "$TIMEOUT" "${envs[@]}" -- "$GUEST" bash test/vm/guest.sh 2> >(tee "$log.vm" >&2) | tee "$log"
	rc=${PIPESTATUS[0]}
	sleep 0.2 # the tee of stderr
	kver=$(sed -n 's/^vm: kernel \([^ ]*\) (\([A-Z]*\)).*/\1 (\2)/p' "$log.vm" | tail -1)
	line=$(sed -n 's/^guest-summary: //p' "$log" | tail -1)
	took=$(($(date +%s) - start))
	case $rc in
	0) summary+=("${kver:-$k}: PASS  $line ($took s)") ;;
	77) summary+=("${kver:-$k}: skipped ($(grep -m1 '^skipping' "$log.vm"))"); [ $status = 0 ] && status=77 ;;
	125) summary+=("${kver:-$k}: VM FAILED  ${line:-no result} ($took s; see $log.vm)"); status=125 ;;
	*) summary+=("${kver:-$k}: FAIL  $line ($took s; log $log)"); [ $status = 125 ] || status=1 ;;
	esac
done
for s in "${summary[@]}"; do echo "vm-matrix: $s"; done
exit $status
