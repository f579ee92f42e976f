# taskcell: `make` builds, `make run` serves from the checkout, `make test` proves it, `make bench` measures it.
CARGO ?= cargo
ROOTFS := target/rootfs
BIN := target/release/taskcell

.PHONY: all build rootfs run test bench bench-quick clean

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
	$(BIN) serve --socket var/taskcell.sock --state-dir var/state

# Needs root (namespaces, cgroups): .ci/run runs it as root.
test: all
	$(CARGO) test --release --workspace -- --test-threads=4

bench: all
	$(CARGO) run --release -p taskcell-bench -- --taskcell $(BIN)

bench-quick: all
	$(CARGO) run --release -p taskcell-bench -- --taskcell $(BIN) --quick

clean:
	$(CARGO) clean
	rm -rf var
