# taskcell: `make` builds, `make run` serves from the checkout, `make test` proves it, `make bench` measures it.
CARGO ?= cargo
ROOTFS := target/rootfs
BIN := target/release/taskcell

.PHONY: all build rootfs run test cluster-test bench bench-quick clean

all: build rootfs

build:
	$(CARGO) build --release --workspace

# The sandbox root: the host's Node, exactly the libraries it loads, and the runtime's JavaScript.
rootfs: target/rootfs.stamp

target/rootfs.stamp: rootfs/build.sh $(wildcard runtime/js/*.js) /usr/bin/node
	bash rootfs/build.sh $(ROOTFS)
	touch $@

# The daemon in the foreground, with its socket and state under ./var/.
run: all
	mkdir -p var
	$(BIN) serve --socket var/taskcell.sock --state-dir var/state --secrets-key var/secrets.key $(if $(wildcard compilers),--compilers-dir compilers)

# Needs root (namespaces, cgroups): .ci/run runs it as root.
test: all
	$(CARGO) test --release --workspace -- --test-threads=4

# Many nodes on one machine (three daemons behind HAProxy, one PostgreSQL, one log hub; needs the haproxy and
# postgresql packages): part of `make test` too.
cluster-test: all
	$(CARGO) test --release --test cluster -- --nocapture

bench: all
	$(CARGO) run --release -p taskcell-bench -- --taskcell $(BIN)

bench-quick: all
	$(CARGO) run --release -p taskcell-bench -- --taskcell $(BIN) --quick

clean:
	$(CARGO) clean
	rm -rf var

# ---- Installing as a systemd service (see README: "Install on a real host") and proving it in a VM.
# `make && sudo make install`: never builds (no cargo as root); the sandbox root is rebuilt at install time
# from this host's Node. DESTDIR stages a package; the paths are those the unit and config name.
PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
UNITDIR ?= $(PREFIX)/lib/systemd/system
SYSCONFDIR ?= /etc
LIBDIR ?= /usr/lib/taskcell
INSTALL_NODE ?= /usr/bin/node
# systemd is told about the new unit only when it runs this host (not for a DESTDIR staging).
SYSTEMD_RUNNING = $(if $(DESTDIR),,$(wildcard /run/systemd/system))

.PHONY: install uninstall vm-test

install:
	@test -x $(BIN) || { echo "make install: $(BIN) is missing: run make first (as yourself, then sudo make install)" >&2; exit 1; }
	install -D -m 0755 $(BIN) $(DESTDIR)$(BINDIR)/taskcell
	NODE=$(INSTALL_NODE) bash rootfs/build.sh $(DESTDIR)$(LIBDIR)/rootfs
	install -d -m 0755 $(DESTDIR)$(UNITDIR)
	sed -e 's|/usr/local/bin/taskcell|$(BINDIR)/taskcell|g' -e 's|/etc/taskcell/|$(SYSCONFDIR)/taskcell/|g' \
		-e 's|/usr/lib/taskcell/|$(LIBDIR)/|g' dist/taskcell.service >$(DESTDIR)$(UNITDIR)/taskcell.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/taskcell.service
	@# The config is the admin's once installed: never overwritten.
	@if [ -e $(DESTDIR)$(SYSCONFDIR)/taskcell/config.json ]; then \
		echo "keeping $(DESTDIR)$(SYSCONFDIR)/taskcell/config.json (the default is dist/config.json)"; \
	else \
		install -d -m 0755 $(DESTDIR)$(SYSCONFDIR)/taskcell && \
		sed -e 's|/usr/lib/taskcell/|$(LIBDIR)/|g' dist/config.json >$(DESTDIR)$(SYSCONFDIR)/taskcell/config.json && \
		chmod 0644 $(DESTDIR)$(SYSCONFDIR)/taskcell/config.json && \
		echo "installed $(DESTDIR)$(SYSCONFDIR)/taskcell/config.json"; \
	fi
	@# The key that seals tenants' secrets: made once, never replaced (a new key opens none of the old values).
	@if [ ! -e $(DESTDIR)$(SYSCONFDIR)/taskcell/secrets.key ]; then \
		install -d -m 0755 $(DESTDIR)$(SYSCONFDIR)/taskcell && \
		(umask 077 && head -c 32 /dev/urandom >$(DESTDIR)$(SYSCONFDIR)/taskcell/secrets.key) && \
		echo "made $(DESTDIR)$(SYSCONFDIR)/taskcell/secrets.key (keep it: it opens the tenants' secrets)"; \
	fi
	$(if $(SYSTEMD_RUNNING),systemctl daemon-reload)
	@echo "installed; start it with: systemctl enable --now taskcell"

# Keeps the state directory (tenants' deployed tasks) and a config that was changed after install.
uninstall:
	$(if $(SYSTEMD_RUNNING),-systemctl disable --now taskcell.service)
	rm -f $(DESTDIR)$(BINDIR)/taskcell $(DESTDIR)$(UNITDIR)/taskcell.service
	if [ -d $(DESTDIR)$(LIBDIR)/rootfs ]; then chmod -R u+w $(DESTDIR)$(LIBDIR)/rootfs && rm -rf $(DESTDIR)$(LIBDIR)/rootfs; fi
	-rmdir $(DESTDIR)$(LIBDIR) 2>/dev/null
	@conf=$(DESTDIR)$(SYSCONFDIR)/taskcell/config.json; \
	if [ -f $$conf ] && sed -e 's|/usr/lib/taskcell/|$(LIBDIR)/|g' dist/config.json | cmp -s - $$conf; then \
		rm -f $$conf; rmdir $(DESTDIR)$(SYSCONFDIR)/taskcell 2>/dev/null || true; \
	elif [ -f $$conf ]; then echo "kept $$conf (changed since install)"; fi
	$(if $(SYSTEMD_RUNNING),systemctl daemon-reload)
	@echo "uninstalled; deployed tasks are kept in /var/lib/taskcell (remove it yourself if unwanted)"

# Debian 12 in qemu (pure cgroup v2, systemd): make install, systemctl, and the checks of vm/guest-check.sh.
# Needs root, debootstrap and qemu-system-x86; the guest image is cached in target/vm/ (rm -rf target/vm).
vm-test: all
	bash vm/run.sh
