# memblock: sanitizer, fuzzing and valgrind targets (included by Makefile).
.PHONY: check-asan check-tsan fuzz
