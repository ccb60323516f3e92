# memblock: an nbdkit plugin serving named, sparse, in-memory block devices.
#
#   make            build ./memblock.so and the man page
#   make check      install what is missing, build, run every test
#   make run        install what is missing, build, serve disk0 in the foreground
#   make install    install as nbdkit's "memblock" plugin and memblock-ctl,
#                   with their man pages
#   make install-service   memblock@.service, its start script, the
#                   memblock user (sysusers.d) and /etc/memblock/example.conf
#   make deb        build the Debian package in build/deb/ (from a copy of the tree)
#   make clean

CC       ?= gcc
OPTFLAGS ?= -O2 -g
WARN     := -Wall -Wextra -Werror
# Recursive (=) so that pkg-config is asked after install-deps has run.
NBDKIT_CFLAGS = $(shell pkg-config --cflags nbdkit 2>/dev/null)
CHECK_LIBS    = $(shell pkg-config --libs check 2>/dev/null)
CODEC_CFLAGS  = $(shell pkg-config --cflags libzstd liblz4 2>/dev/null)
CODEC_LIBS    = $(shell pkg-config --libs libzstd liblz4 2>/dev/null)
JSON_CFLAGS   = $(shell pkg-config --cflags json-c 2>/dev/null)
JSON_LIBS     = $(shell pkg-config --libs json-c 2>/dev/null)
NBD_CFLAGS    = $(shell pkg-config --cflags libnbd 2>/dev/null)
NBD_LIBS      = $(shell pkg-config --libs libnbd 2>/dev/null)
PLUGINDIR     = $(shell pkg-config --variable=plugindir nbdkit 2>/dev/null)
CFLAGS_ALL    = -std=gnu11 $(WARN) $(OPTFLAGS) -fPIC -pthread $(NBDKIT_CFLAGS) \
                $(CODEC_CFLAGS) $(JSON_CFLAGS) $(NBD_CFLAGS) \
                $(SANFLAGS) $(CFLAGS)

PREFIX  ?= /usr/local
MANDIR  ?= $(PREFIX)/share/man
LIBEXECDIR  ?= $(PREFIX)/libexec
SYSCONFDIR  ?= /etc
UNITDIR     ?= $(shell pkg-config --variable=systemdsystemunitdir systemd 2>/dev/null || echo /lib/systemd/system)
SYSUSERSDIR ?= $(shell pkg-config --variable=sysusersdir systemd 2>/dev/null || echo /usr/lib/sysusers.d)

# BUILD holds objects of one variant (plain, asan, tsan).
BUILD ?= build/plain

STORE_SRCS  := plugin/store.c plugin/pagelock.c plugin/acct.c plugin/clone.c \
               plugin/raw.c plugin/units.c plugin/pool.c plugin/fill.c \
               plugin/extents.c \
               plugin/chunkdir.c plugin/arena.c plugin/codec.c \
               plugin/layer.c plugin/gate.c plugin/spare.c
# The control socket and what it drives: devices managed at run time.
CONTROL_SRCS := plugin/manage.c plugin/report.c plugin/job.c plugin/save.c \
                plugin/control.c plugin/rpc.c
PLUGIN_SRCS := plugin/memblock.c plugin/config.c plugin/connect.c plugin/image.c \
               plugin/registry.c plugin/declare.c plugin/human.c plugin/source.c \
               plugin/volatile.c \
               $(CONTROL_SRCS) $(STORE_SRCS)
HEADERS     := $(wildcard plugin/*.h)
UNIT_TESTS  := test-core test-clones test-codecs test-races test-memory test-pool \
               test-snapshots test-volatile

obj = $(patsubst plugin/%.c,$(BUILD)/%.o,$(1))

.PHONY: all deps deps-check deps-deb check run install uninstall clean bench \
        fuzz unit shell-tests print-store-srcs install-service \
        uninstall-service deb

all: memblock.so nbdkit-memblock.1 memblock-ctl.1

$(BUILD)/%.o: plugin/%.c $(HEADERS)
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS_ALL) -c -o $@ $<

$(BUILD)/memblock.so: $(call obj,$(PLUGIN_SRCS))
	$(CC) $(CFLAGS_ALL) -shared -o $@ $^ $(CODEC_LIBS) $(JSON_LIBS) $(NBD_LIBS) $(LDFLAGS)

memblock.so: $(BUILD)/memblock.so
	cp $< $@.tmp && mv -f $@.tmp $@

# The unit tests' shared objects live in $(BUILD)/unit, out of the way
# of tests/run-tests.sh, which runs every $(BUILD)/test-*.
UNIT_HEADERS := tests/unit/helpers.h tests/unit/race.h
UNIT_OBJS     = $(BUILD)/unit/helpers.o $(BUILD)/unit/race.o
# Named only in pattern rules: keep make from deleting them after a link.
.SECONDARY: $(UNIT_OBJS)

$(BUILD)/unit/%.o: tests/unit/%.c $(UNIT_HEADERS) $(HEADERS)
	@mkdir -p $(BUILD)/unit
	$(CC) $(CFLAGS_ALL) -Iplugin -c -o $@ $<

$(BUILD)/test-%: tests/unit/test-%.c $(UNIT_OBJS) $(call obj,$(STORE_SRCS)) \
                 $(UNIT_HEADERS)
	$(CC) $(CFLAGS_ALL) -Iplugin -Itests/unit -o $@ $(filter-out %.h,$^) \
	  $(CHECK_LIBS) $(CODEC_LIBS) $(LDFLAGS)

nbdkit-memblock.1: nbdkit-memblock.pod
	pod2man --section=1 --center="nbdkit" --release="memblock" \
	  --name=nbdkit-memblock $< > $@

memblock-ctl.1: memblock-ctl.pod
	pod2man --section=1 --center="memblock" --release="memblock" \
	  --name=memblock-ctl $< > $@

deps:
	@sh scripts/install-deps.sh build

deps-check:
	@sh scripts/install-deps.sh check

deps-deb:
	@sh scripts/install-deps.sh deb

unit: $(addprefix $(BUILD)/,$(UNIT_TESTS))

check: deps-check
	$(MAKE) all unit
	podchecker nbdkit-memblock.pod memblock-ctl.pod
	sh tests/run-tests.sh $(BUILD)

run: deps
	$(MAKE) all
	sh scripts/run.sh

bench: deps-check
	$(MAKE) all
	sh bench/run.sh

# The store's sources, for bench/run.sh's in-process store bench.
print-store-srcs:
	@echo $(STORE_SRCS)

# Sanitizer, fuzzing and valgrind targets live beside the tests.
include tests/reliability.mk

install: all
	install -D -m 0755 memblock.so $(DESTDIR)$(PLUGINDIR)/nbdkit-memblock-plugin.so
	install -D -m 0644 nbdkit-memblock.1 $(DESTDIR)$(MANDIR)/man1/nbdkit-memblock.1
	install -D -m 0755 scripts/memblock-ctl $(DESTDIR)$(PREFIX)/bin/memblock-ctl
	install -D -m 0644 memblock-ctl.1 $(DESTDIR)$(MANDIR)/man1/memblock-ctl.1

uninstall:
	rm -f $(DESTDIR)$(PLUGINDIR)/nbdkit-memblock-plugin.so \
	      $(DESTDIR)$(MANDIR)/man1/nbdkit-memblock.1 \
	      $(DESTDIR)$(PREFIX)/bin/memblock-ctl \
	      $(DESTDIR)$(MANDIR)/man1/memblock-ctl.1

# The service: memblock@INSTANCE runs LIBEXECDIR/memblock/memblock-start,
# which reads SYSCONFDIR/memblock/INSTANCE.conf.  After installing it by
# hand, run `systemd-sysusers memblock.conf` to make the memblock user.
install-service:
	install -D -m 0755 scripts/memblock-start $(DESTDIR)$(LIBEXECDIR)/memblock/memblock-start
	mkdir -p $(DESTDIR)$(UNITDIR)
	sed 's|/usr/libexec/memblock/|$(LIBEXECDIR)/memblock/|g' systemd/memblock@.service \
	  > $(DESTDIR)$(UNITDIR)/memblock@.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/memblock@.service
	install -D -m 0644 systemd/memblock.sysusers $(DESTDIR)$(SYSUSERSDIR)/memblock.conf
	install -D -m 0644 systemd/example.conf $(DESTDIR)$(SYSCONFDIR)/memblock/example.conf

uninstall-service:
	rm -f $(DESTDIR)$(LIBEXECDIR)/memblock/memblock-start \
	      $(DESTDIR)$(UNITDIR)/memblock@.service \
	      $(DESTDIR)$(SYSUSERSDIR)/memblock.conf \
	      $(DESTDIR)$(SYSCONFDIR)/memblock/example.conf

# The Debian package (debian/), built by dpkg-buildpackage in a copy of
# the tree, build/deb/memblock/, so that this tree stays as it is; the
# .deb (and its -dbgsym, .buildinfo and .changes) land in build/deb/.
deb: deps-deb
	rm -rf build/deb
	mkdir -p build/deb/memblock
	tar -cf - --exclude-vcs --exclude=./build --exclude=./memblock.so \
	    --exclude=./nbdkit-memblock.1 --exclude=./memblock-ctl.1 \
	    --exclude=__pycache__ . | tar -C build/deb/memblock -xf -
	cd build/deb/memblock && dpkg-buildpackage -us -uc -b
	@ls build/deb/*.deb

clean:
	rm -rf build memblock.so nbdkit-memblock.1 memblock-ctl.1
