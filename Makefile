# ftpgate — see README.md. Every target that touches the lab needs root.
GO      ?= go
BIN     := bin/ftpgate
VERSION := $(shell git describe --always --dirty 2>/dev/null || echo dev)

# command:package pairs the tests and the demo need.
TOOLS := vsftpd:vsftpd nft:nftables curl:curl lftp:lftp ip:iproute2 tcpdump:tcpdump \
         python3:python3 setpriv:util-linux ss:iproute2 chromium:chromium

.PHONY: build test unit demo bench fuzz deps clean install uninstall

build:
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/ftpgate

# install puts the binary, the man page, the systemd unit and (if there is
# none yet) the configuration in place; DESTDIR stages them elsewhere.
PREFIX     ?= /usr/local
SBINDIR    ?= $(PREFIX)/sbin
MANDIR     ?= $(PREFIX)/share/man
UNITDIR    ?= /etc/systemd/system
SYSCONFDIR ?= /etc

install: build
	install -D -m 0755 $(BIN) $(DESTDIR)$(SBINDIR)/ftpgate
	install -d $(DESTDIR)$(MANDIR)/man8
	$(BIN) manpage > $(DESTDIR)$(MANDIR)/man8/ftpgate.8
	install -d $(DESTDIR)$(UNITDIR)
	sed 's|@SBINDIR@|$(SBINDIR)|' dist/ftpgate.service > $(DESTDIR)$(UNITDIR)/ftpgate.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/ftpgate.service
	@if [ -e $(DESTDIR)$(SYSCONFDIR)/ftpgate/ftpgate.toml ]; then \
	  echo "kept $(DESTDIR)$(SYSCONFDIR)/ftpgate/ftpgate.toml"; \
	else install -D -m 0644 dist/ftpgate.toml $(DESTDIR)$(SYSCONFDIR)/ftpgate/ftpgate.toml; fi

uninstall:
	rm -f $(DESTDIR)$(SBINDIR)/ftpgate $(DESTDIR)$(MANDIR)/man8/ftpgate.8 $(DESTDIR)$(UNITDIR)/ftpgate.service

# deps installs the system packages that are missing (apt-get, as root).
deps:
	@missing=""; for t in $(TOOLS); do \
	  command -v $${t%%:*} >/dev/null 2>&1 || PATH=$$PATH:/usr/sbin:/sbin command -v $${t%%:*} >/dev/null 2>&1 || missing="$$missing $${t#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "missing packages:$$missing (run as root to install them)"; \
	  else echo "installing:$$missing"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi; \
	fi

# test runs everything: vet, unit tests, fuzz seed corpora, kernel tests in
# throwaway namespaces and the end-to-end lab (the last two need root).
#
# Then it runs the kernel tests and the kernel-dependent lab tests again in a
# qemu VM on Debian 12's own kernel (test/vm/matrix.sh, about 15 minutes under
# TCG), and prints one summary line per kernel; FTPGATE_VM_KERNELS="PKG..."
# adds kernels, FTPGATE_VM=0 leaves the VM out. Where qemu or the kernel
# package cannot be had it says so and skips.
.PHONY: vmtest vmbench
test: deps
	$(GO) vet ./...
	PATH=$$PATH:/usr/sbin:/sbin $(GO) test -count=1 -timeout 30m ./...
	@echo "host: kernel $$(uname -r): PASS (go test ./... above)"
	@if [ "$${FTPGATE_VM:-}" = 0 ] || [ "$${FTPGATE_VM:-}" = 1 ]; then \
	  echo "vm-matrix: skipped (FTPGATE_VM=$$FTPGATE_VM)"; \
	else $(MAKE) --no-print-directory vmtest; fi

vmtest:
	@test/vm/matrix.sh; rc=$$?; \
	if [ $$rc = 77 ]; then echo "vm-matrix: skipped: no VM can run here (see above)"; exit 0; fi; exit $$rc

unit:
	$(GO) test -count=1 ./parser ./conntrack ./capture ./report ./cmd/...

# demo shows the main job on the lab, for a student: real transfers in both modes through a
# default-drop gateway, what was negotiated, opened and closed.
demo: build deps
	PATH=$$PATH:/usr/sbin:/sbin FTPGATE=$(CURDIR)/$(BIN) test/demo.sh

# bench runs the Go benchmarks (parser, packet path, nftables commits with
# 100,000 pinholes), then the kernel helper and ftpgate side by side on the
# lab (test/bench.sh; SESSIONS, TRANSFERS, MODES, CAPTURE, IDLE, OUT tune it).
bench: deps
	$(GO) build -o bin/ftpload ./cmd/ftpload
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/ftpgate
	$(GO) test -run '^$$' -bench . -benchmem ./parser ./conntrack ./rules | tee bench-go.txt
	PATH=$$PATH:/usr/sbin:/sbin test/bench.sh

# vmbench runs test/bench.sh (kernel helper against ftpgate, side by side)
# inside the VM of test/vm on Debian 12's kernel; only its ratios compare
# with the host's. SESSIONS, TRANSFERS, MODES and NAT_MODES as for bench.
vmbench: deps
	$(GO) build -o bin/vm/ftpload ./cmd/ftpload
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o bin/vm/ftpgate ./cmd/ftpgate
	test/vm/run.sh --mem 3G --cpus 2 --timeout 5400 --env FTPGATE=$(CURDIR)/bin/vm/ftpgate \
	  --env FTPLOAD=$(CURDIR)/bin/vm/ftpload --env SESSIONS=$${SESSIONS:-10} --env TRANSFERS=$${TRANSFERS:-100} \
	  --env IDLE=0 --env "MODES=$${MODES:-pasv4 port4 epsv6}" --env "NAT_MODES=$${NAT_MODES-lan-port4 dmz-pasv4}" \
	  -- $(CURDIR) bash test/bench.sh

# fuzz runs each fuzz target for FUZZTIME (seed corpora also run in make test).
FUZZTIME ?= 30s
fuzz:
	$(GO) test ./parser -run '^$$' -fuzz '^FuzzParseCommand$$' -fuzztime $(FUZZTIME)
	$(GO) test ./parser -run '^$$' -fuzz '^FuzzParseReply$$' -fuzztime $(FUZZTIME)
	$(GO) test ./parser -run '^$$' -fuzz '^FuzzFormatRoundTrip$$' -fuzztime $(FUZZTIME)
	$(GO) test ./conntrack -run '^$$' -fuzz '^FuzzPacketPath$$' -fuzztime $(FUZZTIME)
	$(GO) test ./conntrack -run '^$$' -fuzz '^FuzzSessionOracle$$' -fuzztime $(FUZZTIME)
	$(GO) test ./conntrack -run '^$$' -fuzz '^FuzzProxiedLines$$' -fuzztime $(FUZZTIME)
	$(GO) test ./conntrack -run '^$$' -fuzz '^FuzzLineSplitter$$' -fuzztime $(FUZZTIME)
	$(GO) test ./report -run '^$$' -fuzz '^FuzzReportLine$$' -fuzztime $(FUZZTIME)
	$(GO) test ./nat -run '^$$' -fuzz '^FuzzSegment$$' -fuzztime $(FUZZTIME)
	$(GO) test ./nat -run '^$$' -fuzz '^FuzzPacketPathSegments$$' -fuzztime $(FUZZTIME)

clean:
	rm -rf bin
