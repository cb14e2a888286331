# flags.mk - read by bench/run.sh after the Makefile, so that the bench
# program is compiled with exactly the library's flags:
#   make -s -f Makefile -f bench/flags.mk bench-flags
.PHONY: bench-flags
bench-flags:
	@printf '%s\n' '$(CC)' '$(CFLAGS)' '$(LDFLAGS)' '$(LDLIBS)'
