# memblock: sanitizer, fuzzing and valgrind targets (included by Makefile).
#
#   make check-asan   plugin and unit tests built with
#                     -fsanitize=address,undefined in build/asan; the unit
#                     tests run (with leak checks), then the shell tests
#                     ASAN_TESTS run against build/asan/memblock.so, with
#                     the matching libasan preloaded into nbdkit
#   make check-tsan   the unit tests (the store's many-threads tests among
#                     them) under ThreadSanitizer in build/tsan (races;
#                     its lock-order detector is off: a tidy closes one
#                     gate per reader, more mutexes at once than its
#                     64-lock table holds)
#   make fuzz         the libFuzzer store target for FUZZ_SECONDS (300),
#                     corpus in build/fuzz/corpus, seeds from
#                     tests/fuzz/make-seeds.py, crashes in build/fuzz/
# (valgrind runs in make check: tests/test-valgrind.sh.)
.PHONY: check-asan check-tsan fuzz

ASAN_FLAGS := -fsanitize=address,undefined -fno-sanitize-recover=all \
              -fno-omit-frame-pointer
TSAN_FLAGS := -fsanitize=thread
# The ASan runtime of $(CC): nbdkit is not built with ASan, so it must
# be preloaded for the plugin to load.  nbdkit links p11-kit (through
# GnuTLS), whose constructor calls newlocale(); preloaded alone, libasan
# initialises lazily inside that call, breaks glibc's locale lock, and
# nbdkit then hangs at exit after any strerror (%m).  Preloading p11-kit
# ahead of libasan lets ASan initialise first.
LIBASAN = $(shell $(CC) -print-file-name=libasan.so)
P11KIT  = $(shell ldd "$$(command -v nbdkit)" 2>/dev/null | \
            awk '/libp11-kit/ { print $$3 }')
ASAN_REPORTS := $(CURDIR)/build/asan/reports
# The plugin the shell tests load (the one built here by default).
ASAN_SO ?= $(CURDIR)/build/asan/memblock.so
# nbdkit itself leaks a little at exit (and never frees the context of
# a connection open at quit), so leak checks are off in nbdkit; the
# unit tests keep them.  A report of any kind is written under
# ASAN_REPORTS and fails the target even if a test missed the crash.
ASAN_NBDKIT_ENV = LD_PRELOAD=$(if $(P11KIT),$(P11KIT):)$(LIBASAN) \
    ASAN_OPTIONS=detect_leaks=0:verify_asan_link_order=0:log_path=$(ASAN_REPORTS)/asan \
    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:log_path=$(ASAN_REPORTS)/ubsan
# Shell tests run under ASan: all but valgrind (its own instrumentation),
# the fuzz smoke, install and deb (not the plugin), the bench smoke (it runs
# ./memblock.so), guestfish and clone (a minute of appliance boot for
# little more plugin coverage), race, temp and memory (their bounds are
# on the server's RSS, which ASan's shadow memory swamps), mlock
# (ASan's runtime makes munlock do nothing), the snapshot tests with
# guestfish and the snapshot race (minutes more under ASan; the race's
# store-level twin runs under TSan), and temp-grace (its bounds are on
# how soon the reaper frees a device), the formats tests (guestfish
# again, qemu-img and qemu-nbd doing most of the work, and they would
# inherit the preloaded ASan runtime), and the power-cut loop under
# guestfish (minutes of appliance; its cuts run under ASan in
# test-powercut).
ASAN_TESTS ?= $(filter-out test-valgrind.sh test-fuzz-smoke.sh \
                test-bench-smoke.sh test-install.sh test-deb.sh test-guestfish.sh \
                test-clone.sh test-race.sh test-temp.sh test-memory.sh \
                test-mlock.sh test-snapshot-guestfish.sh \
                test-snapshot-race.sh test-temp-grace.sh test-formats.sh \
                test-formats-errors.sh test-powercut-fs.sh, \
                $(notdir $(wildcard tests/test-*.sh)))

check-asan: deps-check
	$(MAKE) BUILD=build/asan SANFLAGS="$(ASAN_FLAGS)" build/asan/memblock.so unit
	rm -rf $(ASAN_REPORTS)
	mkdir -p $(ASAN_REPORTS)
	@rc=0; \
	MEMBLOCK_SO=$(ASAN_SO) NBDKIT_WRAPPER="env $(ASAN_NBDKIT_ENV)" \
	  TESTS="$(ASAN_TESTS)" sh tests/run-tests.sh build/asan || rc=$$?; \
	for f in $(ASAN_REPORTS)/*; do \
	  [ -e "$$f" ] || continue; \
	  echo "--- $$f:"; head -n 60 "$$f"; rc=1; \
	done; \
	[ $$rc -eq 0 ] || echo "check-asan: FAILED (sanitizer reports, if any, are above)"; \
	exit $$rc

# TSan reports fail the run at once (exit 66) and are also looked for in
# the log, in case a test binary swallowed the exit code.
check-tsan: deps-check
	$(MAKE) BUILD=build/tsan SANFLAGS="$(TSAN_FLAGS)" unit
	@passed=0; failed=0; \
	for t in $(UNIT_TESTS); do \
	  log=build/tsan/$$t.log; \
	  start=$$(date +%s); \
	  if ! TSAN_OPTIONS="halt_on_error=1 exitcode=66 second_deadlock_stack=1 detect_deadlocks=0" \
	       CK_FORK=no build/tsan/$$t >$$log 2>&1 || \
	     grep -q 'ThreadSanitizer' $$log; then \
	    cat $$log; echo "FAIL tsan $$t"; failed=$$((failed + 1)); \
	  else \
	    echo "PASS tsan $$t: $$(grep -E '^[0-9]+%: Checks' $$log) ($$(( $$(date +%s) - start )) s)"; \
	    passed=$$((passed + $$(sed -nE 's/^[0-9]+%: Checks: ([0-9]+).*/\1/p' $$log))); \
	  fi; \
	done; \
	echo "tsan: $$passed passed, $$failed failed"; \
	[ $$failed -eq 0 ]

# libFuzzer needs clang; the store is built into the target with the
# same sanitizers.
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 300
FUZZ_FLAGS   := -g -O1 -fsanitize=fuzzer,address,undefined \
                -fno-sanitize-recover=all -fno-omit-frame-pointer

build/fuzz/fuzz-store: tests/fuzz/fuzz-store.c $(STORE_SRCS) $(HEADERS)
	@mkdir -p build/fuzz
	$(FUZZ_CC) -std=gnu11 $(WARN) $(FUZZ_FLAGS) -pthread -Iplugin \
	  -o $@ tests/fuzz/fuzz-store.c $(STORE_SRCS) $(CODEC_LIBS)

# Seeds that reach the volatile layer's paths (tests/fuzz/make-seeds.py).
build/fuzz/seeds/.made: tests/fuzz/make-seeds.py
	rm -rf build/fuzz/seeds
	python3 tests/fuzz/make-seeds.py build/fuzz/seeds
	touch $@

fuzz: build/fuzz/fuzz-store build/fuzz/seeds/.made
	@mkdir -p build/fuzz/corpus
	build/fuzz/fuzz-store -max_total_time=$(FUZZ_SECONDS) -timeout=30 \
	  -rss_limit_mb=2048 -print_final_stats=1 \
	  -artifact_prefix=build/fuzz/ build/fuzz/corpus build/fuzz/seeds
