# qkv - build, test, bench, install.
#
#   make            libqkv.a, libqkv.so and the qkv CLI in build/
#   make test       builds and runs every test (C unit, gradient checks, PyTorch parity)
#   make test SAN=1 the same suite under AddressSanitizer + UndefinedBehaviorSanitizer
#   make bench      speed and memory side by side with PyTorch
#   make demo       the seed's experiments, short
#   make install PREFIX=/usr/local
#
# BLAS=openblas (default when found) or BLAS=none for the built-in GEMM.

CC      ?= gcc
PREFIX  ?= /usr/local
SAN     ?= 0
PYTHON  ?= /usr/bin/python3
# PyPI's pycocotools, the reference of the COCO evaluation tests
# (scripts/install-deps.sh puts it in .venv)
VENV_PYTHON ?= .venv/bin/python

ifeq ($(SAN),1)
BUILD   ?= build-san
OPT     := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
LDSAN   := -fsanitize=address,undefined
else
BUILD   ?= build
OPT     ?= -O3 -march=native -g
LDSAN   :=
endif

BLAS ?= $(shell pkg-config --exists openblas 2>/dev/null && echo openblas || echo none)
ifeq ($(BLAS),openblas)
BLAS_CFLAGS := -DQKV_OPENBLAS $(shell pkg-config --cflags openblas)
BLAS_LIBS   := $(shell pkg-config --libs openblas)
endif

# MPI=1 (default when mpicc is found): the communicator's MPI backend, so
# that `mpirun -np N qkv train ...` trains on N ranks; MPI=0: one process.
# NCCL=1 (off by default; needs MPI, CUDA and NCCL) adds the NCCL backend.
MPI ?= $(shell mpicc --showme:compile >/dev/null 2>&1 && echo 1 || echo 0)
ifeq ($(MPI),1)
MPI_CFLAGS := -DQKV_MPI $(shell mpicc --showme:compile)
MPI_LIBS   := $(shell mpicc --showme:link)
endif
CUDA    ?= /usr/local/cuda
NCCL    ?= 0
ifeq ($(NCCL),1)
MPI_CFLAGS += -DQKV_NCCL -isystem $(CUDA)/include
MPI_LIBS   += -L$(CUDA)/lib64 -Wl,-rpath,$(CUDA)/lib64 -lnccl -lcudart
endif

CJSON_CFLAGS := $(shell pkg-config --cflags libcjson 2>/dev/null)
CJSON_LIBS   := $(shell pkg-config --libs libcjson 2>/dev/null || echo -lcjson)

WARN    := -Wall -Wextra -Wno-unused-parameter -Wshadow -Wstrict-prototypes
# clang reports `omp simd` loops it chose not to vectorise as warnings; that
# is an optimisation remark, not a defect in the code.
ifneq ($(findstring clang,$(shell $(CC) --version 2>/dev/null | head -n1)),)
WARN    += -Wno-pass-failed
endif
# -fno-trapping-math: qkv never reads the floating-point exception flags, and
# without it GCC will not if-convert a loop whose branches hold arithmetic
# (x < 0 ? a : 1 - a), so on AVX2 (no masked vector ops) GELU's erf, the
# softmaxes and the losses stayed scalar: GELU was 11% of ViT-B/16's time on
# a Zen 2 core. Values are unchanged (nothing is reassociated or contracted).
CFLAGS  += -std=c11 -D_GNU_SOURCE -fno-math-errno -fno-trapping-math -ffp-contract=off $(OPT) $(WARN) -fPIC -fopenmp -fvisibility=hidden \
           -Iinclude -Isrc $(BLAS_CFLAGS) $(CJSON_CFLAGS) $(MPI_CFLAGS)
LDLIBS  := $(BLAS_LIBS) $(CJSON_LIBS) $(MPI_LIBS) -lpng -ljpeg -lz -lm
LDFLAGS += -fopenmp $(LDSAN)

SRC     := $(sort $(wildcard src/*/*.c))
OBJ     := $(SRC:%.c=$(BUILD)/obj/%.o)
CLI_SRC := $(sort $(wildcard tools/qkv/*.c))
CLI_OBJ := $(CLI_SRC:%.c=$(BUILD)/obj/%.o)
TEST_SRC := $(sort $(wildcard tests/test_*.c)) tests/runner.c tests/testlib.c
TEST_OBJ := $(TEST_SRC:%.c=$(BUILD)/obj/%.o)
DEPS_OK := $(BUILD)/.deps-ok

.PHONY: all test bench demo install clean deps fixtures experiments fuzz example-translate \
        nccl-check
all: $(BUILD)/libqkv.a $(BUILD)/libqkv.so $(BUILD)/qkv

# Installs the Debian packages the project needs when something is missing.
$(DEPS_OK): scripts/install-deps.sh
	@bash scripts/install-deps.sh
	@mkdir -p $(BUILD) && touch $@
deps: ; @bash scripts/install-deps.sh

$(BUILD)/obj/%.o: %.c include/qkv.h $(wildcard src/*.h src/*/*.h tests/*.h tools/qkv/*.h) | $(DEPS_OK)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

# The backends built in change with MPI and NCCL: their objects follow.
COMM_STAMP := $(BUILD)/.comm-mpi$(MPI)-nccl$(NCCL)
$(COMM_STAMP): | $(DEPS_OK)
	@rm -f $(BUILD)/.comm-*; mkdir -p $(BUILD); touch $@
$(BUILD)/obj/src/base/comm_mpi.o $(BUILD)/obj/src/base/comm_nccl.o: $(COMM_STAMP)

$(BUILD)/libqkv.a: $(OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/libqkv.so: $(OBJ)
	$(CC) -shared $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/qkv: $(CLI_OBJ) $(BUILD)/libqkv.a
	$(CC) $(LDFLAGS) -o $@ $(CLI_OBJ) $(BUILD)/libqkv.a $(LDLIBS)

$(BUILD)/test_qkv: $(TEST_OBJ) $(BUILD)/libqkv.a
	$(CC) $(LDFLAGS) -o $@ $(TEST_OBJ) $(BUILD)/libqkv.a $(LDLIBS)

$(BUILD)/example: tests/example.c $(BUILD)/libqkv.a
	$(CC) $(CFLAGS) -fvisibility=default $(LDFLAGS) -o $@ $< $(BUILD)/libqkv.a $(LDLIBS)

$(BUILD)/example_translate: docs/example_translate.c $(BUILD)/libqkv.a
	$(CC) $(CFLAGS) -fvisibility=default $(LDFLAGS) -o $@ $< $(BUILD)/libqkv.a $(LDLIBS)

# The docs' example reloads a model the CLI trained and must translate as
# `qkv translate` does.
example-translate: $(BUILD)/example_translate $(BUILD)/qkv
	@rm -rf $(BUILD)/example-run
	QKV_PROGRESS=0 $(BUILD)/qkv train transformer --epochs 40 --out-dir $(BUILD)/example-run >/dev/null
	$(BUILD)/example_translate $(BUILD)/example-run "I'm home." "He's calm." > $(BUILD)/example-run/library.txt
	$(BUILD)/qkv translate --model $(BUILD)/example-run "I'm home." "He's calm." > $(BUILD)/example-run/cli.txt
	cmp $(BUILD)/example-run/library.txt $(BUILD)/example-run/cli.txt
	@cat $(BUILD)/example-run/library.txt

# PyTorch fixtures for the parity tests (Debian's python3-torch).
fixtures: $(BUILD)/parity/.stamp $(BUILD)/parity/coco/.stamp $(BUILD)/parity/hf/.stamp
$(BUILD)/parity/.stamp: $(wildcard tests/parity/*.py) | $(DEPS_OK)
	@mkdir -p $(BUILD)/parity
	$(PYTHON) tests/parity/gen.py $(BUILD)/parity
	@touch $@

# Hugging Face's DetrForObjectDetection (PyPI's transformers and timm in
# .venv), the reference of tests/test_detr.c.
$(BUILD)/parity/hf/.stamp: tests/hf/gen.py | $(DEPS_OK)
	@mkdir -p $(BUILD)/parity/hf
	$(VENV_PYTHON) tests/hf/gen.py $(BUILD)/parity/hf
	@touch $@

# Random COCO sets scored by pycocotools (tests/test_coco.c compares).
$(BUILD)/parity/coco/.stamp: $(wildcard tests/coco/*.py) | $(DEPS_OK)
	@mkdir -p $(BUILD)/parity/coco
	$(VENV_PYTHON) tests/coco/gen.py $(BUILD)/parity/coco
	@touch $@

# The NCCL backend cannot run on these machines (no GPU) but must keep
# compiling: where CUDA's nccl.h is installed, `make test` compiles it.
NCCL_H := $(wildcard $(CUDA)/include/nccl.h)
nccl-check:
ifneq ($(NCCL_H),)
ifeq ($(MPI),1)
	$(CC) $(CFLAGS) -DQKV_NCCL -isystem $(CUDA)/include -fsyntax-only src/base/comm_nccl.c
endif
endif

test: $(BUILD)/test_qkv $(BUILD)/example $(BUILD)/qkv fixtures example-translate nccl-check
	$(BUILD)/example
	QKV_FIXTURES=$(BUILD)/parity QKV_BIN=$(BUILD)/qkv $(BUILD)/test_qkv

bench: all
	@bash bench/run.sh $(BUILD)

demo: all
	@bash scripts/demo.sh $(BUILD)

install: all
	install -d $(PREFIX)/include $(PREFIX)/lib/pkgconfig $(PREFIX)/bin
	install -m 644 include/qkv.h $(PREFIX)/include/
	install -m 644 $(BUILD)/libqkv.a $(PREFIX)/lib/
	install -m 755 $(BUILD)/libqkv.so $(PREFIX)/lib/
	install -m 755 $(BUILD)/qkv $(PREFIX)/bin/
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@VERSION@|0.1.0|' -e 's|@LIBS@|$(LDLIBS)|' \
	    qkv.pc.in > $(PREFIX)/lib/pkgconfig/qkv.pc

clean:
	rm -rf build build-san
