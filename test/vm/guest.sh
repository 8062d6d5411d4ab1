#!/bin/bash
# test/vm/guest.sh runs inside the VM (test/vm/matrix.sh boots it): the
# kernel tests of rules, capture and nat whole, and the lab tests that
# exercise the kernel differently on another version (see LAB below), over
# the binaries in $FTPGATE_VM_OUT. It prints each package's result and a last
# line "guest-summary: ..." that matrix.sh reports; it exits 1 if any failed.
set -uo pipefail
OUT=${FTPGATE_VM_OUT:?}
ROOT=$(pwd)
export PATH=$PATH:/usr/sbin:/sbin
# The kernel's configuration, for the tests that check a probe against it.
# Fewer rounds of TestStartupUnderTraffic than on the host (8 per
# variant): each takes about ten times as long here.
export FTPGATE_STARTUP_ROUNDS=${FTPGATE_STARTUP_ROUNDS:-3}
export FTPGATE_KERNEL_CONFIG=${FTPGATE_VM_CACHE:-/var/cache/ftpgate-vm}/$(uname -r)/boot/config-$(uname -r)

# LAB: the lab tests that run in the guest, chosen for what differs between
# kernels (the rest is ftpgate's own logic, the same on any kernel, and the
# whole lab takes about 25 minutes under TCG):
# - transfers in every mode, inline (nft queue natively on 6.1) and through
#   NFLOG copies, IPv4 and IPv6, and that they fail without ftpgate;
# - the NAT lab: ftpgate's proxy (tproxy, policy routing, ctnetlink) and the
#   kernel's own nf_nat_ftp beside it;
# - FTPS scoped ranges (set element expressions) and CCC;
# - the hostile race (two SYNs for one pinhole: the one-packet limit) and
#   forged exchanges; IPv6 extension headers (@ih offsets);
# - start-up under traffic (slow start-up is where races show) and stop.
LAB='^(TestTransfersFailWithoutFtpgate|TestTransfersEveryMode|TestNoRetransmittedSYNInline|TestInlineFailsOpen|TestStopRemovesTable|TestFTPSThroughFtpgate|TestFTPSCCC|TestNATTransfersKernel|TestNATTransfersEveryMode|TestNATTransfersKernelShift|TestNATTransfersProxy|TestNATRestartKeepsSessions|TestNATFTPS|TestHostileRaceTwoSYNs|TestHostileForgedExchange|TestEPRTBehindIPv6DestinationOptions|TestKernelCheckAtStart|TestStartupUnderTraffic)$'
# FTPGATE_VM_LAB runs other lab tests instead (a -test.run pattern).
LAB=${FTPGATE_VM_LAB:-$LAB}

echo "guest: kernel $(uname -r), $(nproc) CPUs, nft $(nft --version | cut -d' ' -f2)"
failed=0 parts=()
# A kernel ftpgate cannot run on (older than its minimum) is tested for
# the refusal: the probe against nft, and the one-line error at start.
RULES=.
if ! "$OUT/ftpgate" kernel; then
	echo "guest: ftpgate cannot run on $(uname -r); testing that it says so"
	RULES='^(TestProbeKernel|TestFeaturesRequire)$'
	LAB='^TestKernelCheckAtStart$'
	export FTPGATE_VM_ONLY=rules,lab
	parts+=("refused-as-expected:")
fi
run() { # name dir binary args...
	local name=$1 dir=$2 bin=$3 start rc passed fails
	shift 3
	case ",${FTPGATE_VM_ONLY:-}," in ,,|*,$name,*) ;; *) return ;; esac
	start=$(date +%s)
	(cd "$dir" && "$bin" -test.count=1 -test.v -test.timeout 40m "$@") >"/tmp/$name.out" 2>&1
	rc=$?
	grep -E '^(=== RUN|\s*--- (PASS|FAIL|SKIP)|(PASS|FAIL|ok)$|panic:)' "/tmp/$name.out" | grep -v '^=== RUN' 
	passed=$(grep -cE '^--- PASS' "/tmp/$name.out")
	fails=$(grep -cE '^--- FAIL' "/tmp/$name.out")
	if [ $rc != 0 ]; then
		failed=1
		echo "guest: $name FAILED (exit $rc); its output:"
		# what the failing tests logged, and the end (a panic or timeout).
		grep -E '^\s*(--- FAIL|[a-z_0-9]+_test\.go:[0-9]+:)' "/tmp/$name.out" | head -200
		tail -30 "/tmp/$name.out"
		parts+=("$name FAIL($fails failed, $passed passed)")
	else
		parts+=("$name ok($passed)")
	fi
	echo "guest: $name exit $rc in $(($(date +%s) - start)) s"
}
run rules "$ROOT/rules" "$OUT/rules.test" -test.run "$RULES"
run capture "$ROOT/capture" "$OUT/capture.test"
run nat "$ROOT/nat" "$OUT/nat.test"
FTPGATE_BIN=$OUT/ftpgate FTPGATE_FORGE=$OUT/forge run lab "$ROOT/test" "$OUT/lab.test" -test.run "$LAB"
echo "guest-summary: ${parts[*]}"
exit $failed
