# SPDX-License-Identifier: MIT
# libeevp - GNU Makefile.  Targets: all check check-asan demo docs install
# uninstall deps clean.  Version numbers come from include/eevp.h, the one
# source of truth.

VERSION_MAJOR := $(shell sed -n 's/^\#define EEVP_VERSION_MAJOR \([0-9]*\).*/\1/p' include/eevp.h)
VERSION_MINOR := $(shell sed -n 's/^\#define EEVP_VERSION_MINOR \([0-9]*\).*/\1/p' include/eevp.h)
VERSION_PATCH := $(shell sed -n 's/^\#define EEVP_VERSION_PATCH \([0-9]*\).*/\1/p' include/eevp.h)
VERSION := $(VERSION_MAJOR).$(VERSION_MINOR).$(VERSION_PATCH)

PREFIX ?= /usr/local
prefix ?= $(PREFIX)
exec_prefix ?= $(prefix)
libdir ?= $(exec_prefix)/lib
includedir ?= $(prefix)/include
mandir ?= $(prefix)/share/man
DESTDIR ?=

CC ?= cc
PKG_CONFIG ?= pkg-config

# Debian packages, per target: each target installs only what it needs
# (deps-build, deps-demo, deps-check, ...); `make deps` installs them all,
# which is what CI and a developer want.  A fresh Debian 12 already has gcc,
# g++, clang, make and python3; they are listed where needed all the same.
BUILD_PACKAGES := gcc libopenblas-dev pkg-config
# the demo: the library and the tinylm runtime (sentencepiece, jansson, the
# WordNet text it evaluates on); no Python, no test tools
DEMO_PACKAGES := $(BUILD_PACKAGES) g++ libsentencepiece-dev libjansson-dev wordnet-base
# vocabulary-parallel shards over MPI: Open MPI for examples/mpi_vocab_parallel.c
# (make check-mpi), mpi4py for Python hosts of the same exchange
MPI_PACKAGES := openmpi-bin libopenmpi-dev python3-mpi4py
# make check: Check, the binding's numpy cross-checks, the tinylm checkpoint
# tests, the PyTorch cross-check and the MPI shards
CHECK_PACKAGES := $(DEMO_PACKAGES) check python3-numpy sentencepiece python3-sentencepiece \
  python3-torch cmake python3-pip python3-venv $(MPI_PACKAGES)
FUZZ_PACKAGES := clang libfuzzer-14-dev libclang-rt-14-dev
VALGRIND_PACKAGES := valgrind
ABI_PACKAGES := abi-dumper abi-compliance-checker
DOCS_PACKAGES := doxygen
DEB_PACKAGES := $(sort $(CHECK_PACKAGES) $(MPI_PACKAGES) $(FUZZ_PACKAGES) $(VALGRIND_PACKAGES) \
  $(ABI_PACKAGES) $(DOCS_PACKAGES))

BLAS_CFLAGS = $(shell $(PKG_CONFIG) --cflags openblas 2>/dev/null)
BLAS_LIBS = $(shell $(PKG_CONFIG) --libs openblas 2>/dev/null || echo -lopenblas)
CHECK_CFLAGS = $(shell $(PKG_CONFIG) --cflags check 2>/dev/null)
CHECK_LIBS = $(shell $(PKG_CONFIG) --libs check 2>/dev/null || echo -lcheck)

WARN := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wvla
CFLAGS ?= -O2 -g
ALL_CFLAGS := -std=c99 -D_POSIX_C_SOURCE=200809L $(WARN) $(CFLAGS) $(EXTRA_CFLAGS) \
  -Iinclude -Isrc $(BLAS_CFLAGS)
LIB_CFLAGS := $(ALL_CFLAGS) -fPIC -fvisibility=hidden

SONAME := libeevp.so.$(VERSION_MAJOR)
SHARED := lib/libeevp.so.$(VERSION)
STATIC := lib/libeevp.a

SRCS := $(wildcard src/*.c)
OBJS := $(patsubst src/%.c,build/%.o,$(SRCS))
TEST_SRCS := $(wildcard tests/check_*.c) tests/ref.c
ASAN_FLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined

.PHONY: all check check-asan demo docs examples install uninstall deps clean \
  deps-build deps-demo deps-check deps-mpi deps-fuzz deps-valgrind deps-abi deps-docs \
  check-licence check-spec-dist check-mpi

all: $(SHARED) lib/$(SONAME) lib/libeevp.so $(STATIC) eevp.pc

build/%.o: src/%.c include/eevp.h $(wildcard src/*.h) | build
	$(CC) $(LIB_CFLAGS) -c $< -o $@

build lib:
	mkdir -p $@

$(SHARED): $(OBJS) src/libeevp.vers | lib
	$(CC) -shared -Wl,-soname,$(SONAME) -Wl,--version-script=src/libeevp.vers \
	  -Wl,--no-undefined -o $@ $(OBJS) $(BLAS_LIBS) -lm -pthread $(LDFLAGS)

lib/$(SONAME): $(SHARED)
	ln -sf libeevp.so.$(VERSION) $@

lib/libeevp.so: lib/$(SONAME)
	ln -sf $(SONAME) $@

$(STATIC): $(OBJS) | lib
	rm -f $@
	$(AR) rcs $@ $(OBJS)

# eevp.pc spells exec_prefix, libdir and includedir relative to ${prefix} (or
# ${exec_prefix}) when they lie below it, so that `pkg-config --define-prefix`
# finds a moved install; a directory outside the prefix stays absolute.
# path_below = the part of $(2) under directory $(1), empty when $(2) is not under it
path_below = $(patsubst $(1)/%,%,$(filter $(1)/%,$(2)))
PC_EXEC_PREFIX = $(if $(filter $(prefix),$(exec_prefix)),$${prefix},$(if \
  $(call path_below,$(prefix),$(exec_prefix)),$${prefix}/$(call path_below,$(prefix),$(exec_prefix)),$(exec_prefix)))
PC_LIBDIR = $(if $(call path_below,$(exec_prefix),$(libdir)),$${exec_prefix}/$(call path_below,$(exec_prefix),$(libdir)),$(if \
  $(call path_below,$(prefix),$(libdir)),$${prefix}/$(call path_below,$(prefix),$(libdir)),$(libdir)))
PC_INCLUDEDIR = $(if $(call path_below,$(prefix),$(includedir)),$${prefix}/$(call path_below,$(prefix),$(includedir)),$(includedir))
PC_SED = sed -e 's|@prefix@|$(prefix)|' -e 's|@exec_prefix@|$(PC_EXEC_PREFIX)|' \
  -e 's|@libdir@|$(PC_LIBDIR)|' -e 's|@includedir@|$(PC_INCLUDEDIR)|' -e 's|@VERSION@|$(VERSION)|'

# The in-tree copy shows the default paths; install writes its own from the
# paths given to it, so a changed PREFIX is never installed stale.
eevp.pc: eevp.pc.in include/eevp.h Makefile
	$(PC_SED) $< > $@

# ---- dependencies -----------------------------------------------------------
deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
	  echo "missing Debian packages:$$missing"; \
	  echo "run: sudo apt-get update && sudo apt-get install -y$$missing"; exit 1; \
	fi; \
	echo "installing:$$missing"; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq$$missing

deps-build deps-demo deps-check deps-mpi deps-fuzz deps-valgrind deps-abi deps-docs:
	@$(MAKE) --no-print-directory deps \
	  DEB_PACKAGES="$($(shell echo $(@:deps-%=%) | tr a-z A-Z)_PACKAGES)"

# ---- tests ------------------------------------------------------------------
tests/check_eevp: $(TEST_SRCS) tests/ref.h include/eevp.h $(SHARED) lib/libeevp.so
	$(CC) $(ALL_CFLAGS) $(CHECK_CFLAGS) -Itests -o $@ $(TEST_SRCS) \
	  -Llib -leevp -Wl,-rpath,'$$ORIGIN/../lib' $(CHECK_LIBS) -lm

check: deps-check
	$(MAKE) all tests/check_eevp
	CK_DEFAULT_TIMEOUT=$${CK_DEFAULT_TIMEOUT:-60} tests/check_eevp
	sh tests/check_symbols.sh
	$(MAKE) check-licence check-spec-dist check-reliability check-python check-examples check-tinylm check-cmake check-docs check-mpi check-mpi-python

# Speculative sampling keeps the full head's law (tests/spec_dist.c: chi-square
# tests over 400000 samples, too many for valgrind, hence their own binary);
# a build with a mutated acceptance rule must fail them.
build/spec_dist build/spec_dist_mutated: tests/spec_dist.c tests/ref.c tests/ref.h $(SRCS) \
  $(wildcard src/*.h) include/eevp.h | build
	$(CC) $(ALL_CFLAGS) $(if $(findstring mutated,$@),-DEEVPI_TEST_MUTATE_ACCEPT) -Itests \
	  -o $@ tests/spec_dist.c tests/ref.c $(SRCS) $(BLAS_LIBS) -lm -pthread

check-spec-dist: build/spec_dist build/spec_dist_mutated
	build/spec_dist
	@if build/spec_dist_mutated > build/spec_dist_mutated.log 2>&1; then \
	  cat build/spec_dist_mutated.log; \
	  echo "check-spec-dist: the mutated acceptance rule passed: the test cannot fail"; exit 1; \
	else echo "check-spec-dist: the mutated acceptance rule fails, as it must:"; \
	  grep -E '^(T |FAIL)' build/spec_dist_mutated.log | sed 's/^/  /'; fi

# Every file names its licence (SPDX line or .reuse/dep5).
check-licence:
	python3 tests/check_licence.py

# The guides' C, C++ and Python blocks, built against the tree and run, each
# as a program or pasted into its harness (tests/docs/README.md); a few
# seconds.  Any unmarked block fails it.
.PHONY: check-docs
check-docs: all
	python3 tests/docs/check_docs.py --cc '$(CC)' --cflags '$(ALL_CFLAGS) -Werror' \
	  --cxx '$(CXX)' --libs '$(BLAS_LIBS)' --python '$(PYTHON)'

# The same suites with the library and the tests built under ASan and UBSan,
# linked statically so that the instrumented objects are the ones tested.
check-asan: deps-check
	rm -rf build/asan && mkdir -p build/asan
	$(CC) $(ALL_CFLAGS) $(ASAN_FLAGS) $(CHECK_CFLAGS) -Itests -o build/asan/check_eevp \
	  $(SRCS) $(TEST_SRCS) $(BLAS_LIBS) $(CHECK_LIBS) -lm
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
	  CK_DEFAULT_TIMEOUT=600 build/asan/check_eevp

# ---- examples ---------------------------------------------------------------
EXAMPLES := examples/demo examples/hello examples/minimal examples/custom_criterion \
  examples/sampling examples/prefill

examples/%: examples/%.c include/eevp.h $(SHARED) lib/libeevp.so
	$(CC) $(ALL_CFLAGS) -o $@ $< -Llib -leevp -Wl,-rpath,'$$ORIGIN/../lib' -lm

examples: $(EXAMPLES)

# The main job: early exit with pruned confidence on the model trained here
# (docs/TINYLM.md), then the synthetic 32000 x 4096 head.
demo: deps-demo
	$(MAKE) all examples/demo tinylm
	examples/tinylm/tinylm demo
	examples/demo

# ---- reliability (issue 6) --------------------------------------------------
# Fuzzing (libFuzzer, clang, ASan+UBSan), the regression-corpus replay that
# `make check` runs without libFuzzer, ThreadSanitizer, valgrind and the ABI
# gate.  docs/RELIABILITY.md describes each and its figures.
FUZZ_CC ?= clang
FUZZ_SECONDS ?= 60
FUZZ_SEED ?= 1
# The demo runtime's checkpoint loader joins when it is in the tree.
FUZZ_TARGETS := api options kernels spec shard $(if $(wildcard examples/tinylm/ckpt.c),tinylm)
FUZZ_FLAGS := -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined \
  -fno-sanitize-recover=undefined
FUZZ_DEPS := tests/fuzz/fuzz_common.h $(SRCS) $(wildcard src/*.h) include/eevp.h
FUZZ_BINS := $(patsubst %,build/fuzz/fuzz_%,$(FUZZ_TARGETS))
REPLAY_BINS := $(patsubst %,build/fuzz/replay_%,$(FUZZ_TARGETS))

.PHONY: fuzz fuzz-build check-fuzz-replay check-version check-reliability check-tsan \
  valgrind abi-dump abi-check abi-baseline

build/fuzz:
	mkdir -p $@

# The library's sources are compiled into each fuzzer so that they carry the
# coverage instrumentation; OpenBLAS stays Debian's own, uninstrumented.
build/fuzz/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_DEPS) | build/fuzz
	$(FUZZ_CC) -std=c99 -D_POSIX_C_SOURCE=200809L $(WARN) $(FUZZ_FLAGS) -Iinclude -Isrc \
	  $(BLAS_CFLAGS) -o $@ $< $(SRCS) $(BLAS_LIBS) -lm

# The checkpoint loader: ckpt.c (with matmul.c, which packs the loaded
# matrices), with Debian's libjansson (not fuzzed).
JANSSON_CFLAGS = $(shell $(PKG_CONFIG) --cflags jansson 2>/dev/null)
JANSSON_LIBS = $(shell $(PKG_CONFIG) --libs jansson 2>/dev/null || echo -ljansson)
TINYLM_CKPT := examples/tinylm/ckpt.c examples/tinylm/matmul.c examples/tinylm/tinylm.h

build/fuzz/fuzz_tinylm: tests/fuzz/fuzz_tinylm.c $(TINYLM_CKPT) | build/fuzz
	$(FUZZ_CC) -std=c99 -D_POSIX_C_SOURCE=200809L $(WARN) $(FUZZ_FLAGS) -Iexamples/tinylm \
	  $(JANSSON_CFLAGS) -o $@ $< examples/tinylm/ckpt.c examples/tinylm/matmul.c \
	  $(JANSSON_LIBS) -lm

fuzz-build: deps-fuzz
	$(MAKE) $(FUZZ_BINS)

# Each target runs FUZZ_SECONDS from its committed seeds (copied, so the
# committed corpus only changes on purpose) plus its regression corpus, with
# a fixed seed.  A crash is copied into tests/fuzz/regress/<target>/, which
# `make check` replays from then on, and fails the run.
fuzz: $(FUZZ_BINS)
	@set -e; for t in $(FUZZ_TARGETS); do \
	  work=build/fuzz/work/$$t; art=build/fuzz/artifacts/$$t; \
	  rm -rf $$work $$art; mkdir -p $$work $$art tests/fuzz/regress/$$t; \
	  cp tests/fuzz/corpus/$$t/* $$work/; \
	  case $$t in tinylm) len=16384;; *) len=4096;; esac; \
	  echo "== fuzz_$$t: $(FUZZ_SECONDS) s, seed $(FUZZ_SEED)"; \
	  if ! OPENBLAS_NUM_THREADS=1 ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	    UBSAN_OPTIONS=print_stacktrace=1 build/fuzz/fuzz_$$t -seed=$(FUZZ_SEED) \
	    -max_total_time=$(FUZZ_SECONDS) -max_len=$$len -timeout=20 -rss_limit_mb=2048 \
	    -print_final_stats=1 -artifact_prefix=$$art/ $$work tests/fuzz/regress/$$t \
	    > build/fuzz/$$t.log 2>&1; then \
	    tail -n 60 build/fuzz/$$t.log; \
	    for a in $$art/*; do [ -f "$$a" ] && cp "$$a" tests/fuzz/regress/$$t/; done; \
	    echo "fuzz_$$t failed: input(s) saved under tests/fuzz/regress/$$t/"; exit 1; \
	  fi; \
	  grep -E '^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)' \
	    build/fuzz/$$t.log | sed "s/^/  fuzz_$$t /"; \
	done

# The fuzz targets with a plain main() (tests/fuzz/replay.c) and the shared
# library: no libFuzzer and no clang needed at run time.
build/fuzz/replay_%: tests/fuzz/fuzz_%.c tests/fuzz/replay.c tests/fuzz/fuzz_common.h \
  include/eevp.h $(SHARED) lib/libeevp.so | build/fuzz
	$(CC) $(ALL_CFLAGS) -o $@ $< tests/fuzz/replay.c -Llib -leevp \
	  -Wl,-rpath,'$$ORIGIN/../../lib' -lm

build/fuzz/replay_tinylm: tests/fuzz/fuzz_tinylm.c tests/fuzz/replay.c $(TINYLM_CKPT) \
  | build/fuzz
	$(CC) $(ALL_CFLAGS) -Iexamples/tinylm $(JANSSON_CFLAGS) -o $@ $< tests/fuzz/replay.c \
	  examples/tinylm/ckpt.c examples/tinylm/matmul.c $(JANSSON_LIBS) -lm

check-fuzz-replay: $(REPLAY_BINS)
	@set -e; for t in $(FUZZ_TARGETS); do \
	  dirs=""; for d in tests/fuzz/corpus/$$t tests/fuzz/regress/$$t; do \
	    [ -d $$d ] && dirs="$$dirs $$d"; done; \
	  OPENBLAS_NUM_THREADS=1 build/fuzz/replay_$$t $$dirs; \
	done

# Header macros, SONAME, file names and eevp.pc agree.
check-version: all
	sh tests/abi/check_version.sh

check-reliability: check-fuzz-replay check-version

# ThreadSanitizer: the library's sources and each tests/threads/*.c program
# built with -fsanitize=thread.  OpenBLAS's own worker threads are not
# instrumented and trip TSan, so they are switched off for the run.
TSAN_FLAGS := -O1 -g -fno-omit-frame-pointer -fsanitize=thread
THREAD_TESTS := $(patsubst tests/threads/%.c,build/tsan/%,$(wildcard tests/threads/*.c))

build/tsan/%: tests/threads/%.c $(SRCS) $(wildcard src/*.h) include/eevp.h
	@mkdir -p build/tsan
	$(CC) $(ALL_CFLAGS) $(TSAN_FLAGS) -o $@ $< $(SRCS) $(BLAS_LIBS) -lm -lpthread

check-tsan: $(THREAD_TESTS)
	@set -e; for t in $(THREAD_TESTS); do \
	  OPENBLAS_NUM_THREADS=1 TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" $$t; \
	done

# valgrind memcheck over the whole Check suite in one process (CK_FORK=no,
# so that every test runs under it) and over the fuzz replays.
VALGRIND := valgrind -q --error-exitcode=99 --leak-check=full \
  --errors-for-leak-kinds=definite,indirect --show-leak-kinds=definite,indirect

valgrind: deps-valgrind
	$(MAKE) all tests/check_eevp $(REPLAY_BINS)
	CK_FORK=no OPENBLAS_NUM_THREADS=1 $(VALGRIND) tests/check_eevp
	@set -e; for t in $(FUZZ_TARGETS); do \
	  dirs=""; for d in tests/fuzz/corpus/$$t tests/fuzz/regress/$$t; do \
	    [ -d $$d ] && dirs="$$dirs $$d"; done; \
	  OPENBLAS_NUM_THREADS=1 $(VALGRIND) build/fuzz/replay_$$t $$dirs; \
	done

# ABI gate (tests/abi/abi.sh, docs/ABI.md): abi-dump writes build/abi/
# current.dump; abi-check compares it with the committed baseline of this
# major version and tests the gate itself; abi-baseline rewrites the
# baseline, which is done only when a release is cut.
ABI_ENV = CC="$(CC)" BLAS_CFLAGS="$(BLAS_CFLAGS)" BLAS_LIBS="$(BLAS_LIBS)"

abi-dump:
	$(ABI_ENV) sh tests/abi/abi.sh dump include build/abi/current.dump

abi-check: deps-abi
	$(ABI_ENV) sh tests/abi/abi.sh check
	$(ABI_ENV) sh tests/abi/abi.sh selftest

abi-baseline:
	$(ABI_ENV) sh tests/abi/abi.sh baseline

# ---- bench (issue 4) ---------------------------------------------------------
# The benchmark needs /usr/bin/python3 with Debian's python3-numpy and
# python3-torch (the peers) and gnuplot-nox (the plots): `make bench-deps`.
BENCH_PACKAGES := python3-numpy python3-torch gnuplot-nox
BENCH_PY := /usr/bin/python3

tests/bench/bench: tests/bench/bench.c include/eevp.h $(wildcard src/*.h) $(STATIC)
	$(CC) $(ALL_CFLAGS) -o $@ $< $(STATIC) $(BLAS_LIBS) -lm -pthread

bench-deps:
	$(MAKE) deps DEB_PACKAGES="$(BUILD_PACKAGES) $(BENCH_PACKAGES)"

# Everything: all shapes, 1 and 2 OpenBLAS threads, the peers, the plots
# (docs/bench_*.png) and docs/bench_results.txt.  Takes several minutes.
bench: bench-deps
	$(MAKE) all tests/bench/bench
	$(BENCH_PY) tests/bench/run_bench.py --out docs

# One shape (32000 x 4096), one thread, B in {1, 16}: under 60 s.
bench-quick: bench-deps
	$(MAKE) all tests/bench/bench
	$(BENCH_PY) tests/bench/run_bench.py --quick

.PHONY: bench bench-quick bench-deps

# ---- python and examples (issue 3) -------------------------------------------
# The Python binding (src/python/eevp, ctypes only) is tested under Debian's
# /usr/bin/python3, which has python3-numpy and must run the numpy
# cross-checks (EEVP_REQUIRE_NUMPY), and under the default python3, which may
# lack numpy: the numpy tests are then reported as skipped.
PYTHON ?= /usr/bin/python3
PYTHON_TEST_ENV = PYTHONPATH=$(CURDIR)/src/python EEVP_LIBRARY=$(CURDIR)/lib/$(SONAME)
PYTHON_UNITTEST = -m unittest discover -s tests/python -p 'test_*.py'
# Where install puts the eevp package: the first of
# $(prefix)/lib/python3/dist-packages and $(prefix)/lib/python3.X/dist-packages
# on $(PYTHON)'s path (Debian's layout: /usr, /usr/local), else
# $(prefix)/lib/python3.X/site-packages (then add it to PYTHONPATH).
PYTHON_SITEDIR ?= $(shell $(PYTHON) -c 'import sys, site; p = sys.argv[1].rstrip("/"); \
  v = "python%d.%d" % sys.version_info[:2]; \
  c = [p + "/lib/python3/dist-packages", p + "/lib/" + v + "/dist-packages", p + "/lib/" + v + "/site-packages"]; \
  s = set(sys.path) | set(site.getsitepackages()) | {site.getusersitepackages()}; \
  print(next((d for d in c if d in s), c[-1]))' '$(prefix)' 2>/dev/null \
  || echo '$(prefix)/lib/python3/dist-packages')
# The C++ example is built from a staged install, as a user would build it.
EXAMPLE_DESTDIR = $(CURDIR)/build/example-install
# The package's build backend (standard library only); `make install` installs
# the package with it, its .dist-info included, so that pip knows about it.
PYTHON_BACKEND = src/python/backend/eevp_backend.py
# PYTHON_INSTALL=no: install and uninstall leave the Python package out
# (what install-lib and uninstall-lib do), for packagers who ship it apart.
PYTHON_INSTALL ?= yes

.PHONY: check-python check-pip check-examples install-python uninstall-python install-lib \
  uninstall-lib

check-python: all
	$(PYTHON_TEST_ENV) EEVP_REQUIRE_NUMPY=1 $(PYTHON) $(PYTHON_UNITTEST)
	$(PYTHON_TEST_ENV) python3 $(PYTHON_UNITTEST)
	$(MAKE) --no-print-directory check-pip

# pip install into a fresh venv of each interpreter, offline, and uninstall;
# the library-only install; make install-python as pip sees it
# (tests/python/check_pip.py).  About 20 s.
check-pip: all
	python3 tests/python/check_pip.py --make "$(MAKE)" --libdir '$(libdir)' \
	  --sitedir '$(PYTHON_SITEDIR)' python3 $(PYTHON)

check-examples: all examples
	examples/hello
	examples/minimal
	examples/custom_criterion
	examples/sampling
	examples/prefill
	$(PYTHON_TEST_ENV) $(PYTHON) examples/python_demo.py
	$(PYTHON_TEST_ENV) EEVP_REQUIRE_NUMPY=1 $(PYTHON) examples/numpy_loop.py
	rm -rf $(EXAMPLE_DESTDIR)
	$(MAKE) install DESTDIR=$(EXAMPLE_DESTDIR)
	PKG_CONFIG_PATH=$(EXAMPLE_DESTDIR)$(libdir)/pkgconfig PKG_CONFIG_SYSROOT_DIR=$(EXAMPLE_DESTDIR) \
	  sh -c '$(CXX) -std=c++17 -Wall -Wextra -o $(EXAMPLE_DESTDIR)/cpp_pkgconfig \
	  examples/cpp_pkgconfig.cpp $$($(PKG_CONFIG) --cflags --libs eevp)'
	LD_LIBRARY_PATH=$(EXAMPLE_DESTDIR)$(libdir) $(EXAMPLE_DESTDIR)/cpp_pkgconfig
	cd / && env -u EEVP_LIBRARY LD_LIBRARY_PATH=$(EXAMPLE_DESTDIR)$(libdir) \
	  PYTHONPATH=$(EXAMPLE_DESTDIR)$(PYTHON_SITEDIR) $(PYTHON) -c 'import eevp; \
	  print("installed eevp", eevp.__version__, "from", eevp.__file__, "on", eevp.library_path())'

# `make install` also installs the package (unless PYTHON_INSTALL=no); the
# installed copy records $(libdir) in eevp/_install.py and looks there for
# the library after the loader path.
ifneq ($(PYTHON_INSTALL),no)
install: install-python
uninstall: uninstall-python
endif

# What install installs but the Python package: library, header, eevp.pc,
# CMake package, man pages.
install-lib:
	$(MAKE) install PYTHON_INSTALL=no

uninstall-lib:
	$(MAKE) uninstall PYTHON_INSTALL=no

install-python:
	@test -n "$(PYTHON_SITEDIR)" || { echo "PYTHON_SITEDIR is empty"; exit 1; }
	$(PYTHON) $(PYTHON_BACKEND) install --root '$(DESTDIR)' --sitedir '$(PYTHON_SITEDIR)' \
	  --libdir '$(libdir)'

uninstall-python:
	@test -n "$(PYTHON_SITEDIR)" || { echo "PYTHON_SITEDIR is empty"; exit 1; }
	rm -rf $(DESTDIR)$(PYTHON_SITEDIR)/eevp $(DESTDIR)$(PYTHON_SITEDIR)/eevp-[0-9]*.dist-info

# ---- tinylm (issue 5) -------------------------------------------------------
# A reference early-exit runtime for Llama-architecture checkpoints and a small
# model trained here on WordNet's glosses (docs/TINYLM.md).  Needs the Debian
# packages in TINYLM_DEB_PACKAGES; the PyTorch cross-check needs python3-torch
# under /usr/bin/python3 and is skipped with a message without it.
TINYLM_DEB_PACKAGES := libsentencepiece-dev libjansson-dev wordnet-base
TINYLM_PY := /usr/bin/python3
CXX ?= c++
TINYLM_SRCS := examples/tinylm/main.c examples/tinylm/decode.c examples/tinylm/eval.c \
  examples/tinylm/demo.c examples/tinylm/measure.c examples/tinylm/batchtest.c \
  examples/tinylm/spec.c examples/tinylm/demo_spec.c \
  examples/tinylm/ckpt.c examples/tinylm/llama.c examples/tinylm/matmul.c examples/tinylm/text.c
TINYLM_OBJS := $(patsubst examples/tinylm/%.c,build/tinylm/%.o,$(TINYLM_SRCS)) \
  build/tinylm/tok.o
# GCC's -O2 vectorises only loops that need no remainder code: the runtime's
# loops over a head or the hidden size do (element-wise, so the same bits).
# Clang vectorises them at -O2 already and does not know the flag.
TINYLM_VECT := $(shell $(CC) -fvect-cost-model=dynamic -E -x c /dev/null >/dev/null 2>&1 \
  && echo -fvect-cost-model=dynamic)
TINYLM_CFLAGS = $(ALL_CFLAGS) $(TINYLM_VECT) $(shell $(PKG_CONFIG) --cflags jansson 2>/dev/null)
TINYLM_LIBS = $(shell $(PKG_CONFIG) --libs jansson 2>/dev/null || echo -ljansson) \
  -lsentencepiece $(BLAS_LIBS) -lm

.PHONY: tinylm tinylm-train check-tinylm demo-tinylm demo-sweep demo-policies

build/tinylm:
	mkdir -p $@

build/tinylm/%.o: examples/tinylm/%.c examples/tinylm/tinylm.h examples/tinylm/runtime.h include/eevp.h | build/tinylm
	$(CC) $(TINYLM_CFLAGS) -c $< -o $@

build/tinylm/tok.o: examples/tinylm/tok.cc examples/tinylm/tinylm.h | build/tinylm
	$(CXX) -std=c++17 -O2 -g -Wall -Wextra -c $< -o $@

examples/tinylm/tinylm: $(TINYLM_OBJS) $(SHARED) lib/libeevp.so
	$(CXX) -o $@ $(TINYLM_OBJS) -Llib -leevp -Wl,-rpath,'$$ORIGIN/../../lib' $(TINYLM_LIBS)

tinylm: all examples/tinylm/tinylm

# Retrain the shipped model (docs/TINYLM.md gives the time; not run by CI).
# Stage 1 (LayerSkip's recipe, from scratch) into build/tinylm-stage1, then
# three stages of self-distillation towards the last layer, each from the
# one before with a heavier weight on the early layers, then a stage that
# adds the state-propagation loss (its teacher: stage 4, frozen) into the
# model directory (docs/TINYLM.md §2).  Stages 2-5 ran on one thread.
TINYLM_DISTILL := --steps 1000 --warmup 10 --curriculum 0 --threads 1
tinylm-train:
	$(TINYLM_PY) examples/tinylm/train/train.py --out build/tinylm-stage1
	$(TINYLM_PY) examples/tinylm/train/train.py --init build/tinylm-stage1 \
	  --out build/tinylm-stage2 $(TINYLM_DISTILL) --lr 4e-4 --distill 0.9 --exit-scale 4
	$(TINYLM_PY) examples/tinylm/train/train.py --init build/tinylm-stage2 \
	  --out build/tinylm-stage3 $(TINYLM_DISTILL) --lr 3e-4 --distill 0.95 --exit-scale 6
	$(TINYLM_PY) examples/tinylm/train/train.py --init build/tinylm-stage3 \
	  --out build/tinylm-stage4 $(TINYLM_DISTILL) --lr 3e-4 --distill 0.95 --exit-scale 8
	$(TINYLM_PY) examples/tinylm/train/train.py --init build/tinylm-stage4 \
	  --out examples/tinylm/model --steps 800 --warmup 10 --curriculum 0 --threads 1 \
	  --lr 2e-4 --distill 0.95 --exit-scale 8 --propagate 1
	for n in 1 2 3 4; do cp build/tinylm-stage$$n/train_log.json \
	  examples/tinylm/model/train_log_stage$$n.json; done

# Checkpoint-reader tests (corrupt, truncated, mismatched files), the PyTorch
# cross-check (batched prefill included), the runtime's batch-invariance
# test, and a quick run of the three modes.
check-tinylm: tinylm
	$(TINYLM_PY) examples/tinylm/test/test_ckpt.py
	$(TINYLM_PY) examples/tinylm/test/test_text.py
	$(TINYLM_PY) examples/tinylm/test/verify_torch.py
	examples/tinylm/tinylm check-batch
	examples/tinylm/tinylm check-spec
	examples/tinylm/tinylm generate --max-new 12 "violin:" "river:"

demo-tinylm: tinylm
	examples/tinylm/tinylm demo

# The candidate-set policies against the plain method (docs/POLICIES.md).
demo-policies: tinylm
	examples/tinylm/tinylm policies --test-tokens 1024

demo-sweep: tinylm
	$(TINYLM_PY) examples/tinylm/test/sweep_plot.py

# ---- vocabulary-parallel shards over MPI --------------------------------------
# examples/mpi_vocab_parallel.c: P ranks, each with a block of the LM head's
# rows and a shard context (eevp_ctx_create_shard), exchange their records by
# MPI_Allreduce (a user-defined MPI_Op over eevp_shard_merge) or MPI_Allgather,
# on a synthetic head and on tinylm, and check every decision against the
# unsharded head.  It reuses the tinylm runtime's own objects: the runner
# (decode.o) and what it calls (ckpt.o, llama.o, matmul.o, tok.o); not all of
# $(TINYLM_OBJS) less main.o, since demo.o calls run_generate in main.o.
MPICC ?= mpicc
MPIRUN ?= mpirun
MPIRUN_FLAGS ?= --allow-run-as-root --oversubscribe
MPI_TINYLM_OBJS := build/tinylm/decode.o build/tinylm/ckpt.o build/tinylm/llama.o \
  build/tinylm/matmul.o build/tinylm/tok.o
# One OpenBLAS thread per rank (two cores); shared-memory transfers without
# CMA/KNEM, which containers often forbid; ranks yield while they wait.
MPI_RUN_ENV := OPENBLAS_NUM_THREADS=1 OMPI_MCA_btl_vader_single_copy_mechanism=none \
  OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_mpi_yield_when_idle=1
MPI_CHECK_RANKS ?= 1 2 3 4
MPI_CHECK_TOKENS ?= 10
MPI_CHECK_TIMEOUT ?= 300

examples/mpi_vocab_parallel: examples/mpi_vocab_parallel.c $(MPI_TINYLM_OBJS) \
  examples/tinylm/runtime.h examples/tinylm/tinylm.h include/eevp.h $(SHARED) lib/libeevp.so
	$(MPICC) $(TINYLM_CFLAGS) -Iexamples/tinylm -o $@ $< $(MPI_TINYLM_OBJS) -Llib -leevp \
	  -Wl,-rpath,'$$ORIGIN/../lib' $(TINYLM_LIBS) -lstdc++

# 1 to 4 ranks (uneven blocks), by MPI_Allreduce and (2 ranks and more) by
# MPI_Allgather, over the synthetic head and tinylm: 13 configurations each,
# 2 prompts of MPI_CHECK_TOKENS tokens, every decision compared with the
# unsharded head's (exit 1 on a mismatch).  Then the checks must see two
# deliberate faults: a hidden state one ulp off on one rank, and a record
# left out of the merge.  About 35 s on two busy cores.
check-mpi: deps-demo deps-mpi
	$(MAKE) all examples/mpi_vocab_parallel
	@set -e; for n in $(MPI_CHECK_RANKS); do for x in "" --allgather; do \
	  if [ $$n = 1 ] && [ -n "$$x" ]; then continue; fi; \
	  log=build/check-mpi-$$n$$x.log; \
	  echo "== mpirun -n $$n examples/mpi_vocab_parallel --quiet --tokens $(MPI_CHECK_TOKENS) $$x"; \
	  if ! env $(MPI_RUN_ENV) timeout $(MPI_CHECK_TIMEOUT) $(MPIRUN) $(MPIRUN_FLAGS) -n $$n \
	    examples/mpi_vocab_parallel --quiet --tokens $(MPI_CHECK_TOKENS) $$x > $$log 2>&1; then \
	    cat $$log; echo "check-mpi: failed with $$n rank(s) $$x ($$log)"; exit 1; fi; \
	  grep -E 'MISMATCH|NEAR-THRESHOLD|within 1e-6' $$log | sed 's/^/  /' || true; \
	  tail -n 1 $$log | sed 's/^/  /'; \
	done; done
	@set -e; for f in "hidden" "drop --allgather"; do \
	  log=build/check-mpi-fault.log; \
	  if env $(MPI_RUN_ENV) timeout $(MPI_CHECK_TIMEOUT) $(MPIRUN) $(MPIRUN_FLAGS) -n 2 \
	    examples/mpi_vocab_parallel --source synth --config gap-k64 --tokens 2 --quiet \
	    --fault $$f > $$log 2>&1; then \
	    cat $$log; echo "check-mpi: the fault --fault $$f passed: the checks cannot fail"; \
	    exit 1; fi; \
	  grep -q 'EEVP_ERECORD' $$log || { cat $$log; \
	    echo "check-mpi: --fault $$f failed, but not through EEVP_ERECORD"; exit 1; }; \
	  echo "check-mpi: --fault $$f fails, as it must: $$(grep -m1 EEVP_ERECORD $$log | sed 's/^ *//')"; \
	done

# ---- vocabulary-parallel shards over MPI, from Python -------------------------
# examples/mpi_vocab_parallel.py: the loop of check-mpi through the binding
# (eevp.ShardContext) and mpi4py, on its synthetic head, under $(PYTHON)
# (Debian's python3-mpi4py serves /usr/bin/python3 only): 1 to 4 ranks, by
# Allreduce (eevp.merge as an MPI.Op) and by allgather + eevp.merge_all, 13
# configurations each, every decision compared with the unsharded head's.
# Then the two deliberate faults must fail through eevp.RecordError.  About
# 40 s on two cores; `make check` runs it after check-mpi.
.PHONY: check-mpi-python
check-mpi-python: deps-mpi
	$(MAKE) all
	@set -e; for n in $(MPI_CHECK_RANKS); do for x in "" --allgather; do \
	  log=build/check-mpi-python-$$n$$x.log; \
	  echo "== mpirun -n $$n $(PYTHON) examples/mpi_vocab_parallel.py --quiet $$x"; \
	  if ! env $(PYTHON_TEST_ENV) EEVP_REQUIRE_MPI=1 $(MPI_RUN_ENV) timeout $(MPI_CHECK_TIMEOUT) \
	    $(MPIRUN) $(MPIRUN_FLAGS) -n $$n $(PYTHON) examples/mpi_vocab_parallel.py --quiet $$x \
	    > $$log 2>&1; then \
	    cat $$log; echo "check-mpi-python: failed with $$n rank(s) $$x ($$log)"; exit 1; fi; \
	  grep -E 'MISMATCH|NEAR-THRESHOLD|within 1e-6' $$log | sed 's/^/  /' || true; \
	  tail -n 1 $$log | sed 's/^/  /'; \
	done; done
	@set -e; for f in "hidden" "drop --allgather"; do \
	  log=build/check-mpi-python-fault.log; \
	  if env $(PYTHON_TEST_ENV) EEVP_REQUIRE_MPI=1 $(MPI_RUN_ENV) timeout $(MPI_CHECK_TIMEOUT) \
	    $(MPIRUN) $(MPIRUN_FLAGS) -n 2 $(PYTHON) examples/mpi_vocab_parallel.py \
	    --config gap-k64 --tokens 2 --quiet --fault $$f > $$log 2>&1; then \
	    cat $$log; echo "check-mpi-python: the fault --fault $$f passed: the checks cannot fail"; \
	    exit 1; fi; \
	  grep -q 'RecordError' $$log || { cat $$log; \
	    echo "check-mpi-python: --fault $$f failed, but not through RecordError"; exit 1; }; \
	  echo "check-mpi-python: --fault $$f fails, as it must: $$(grep -m1 RecordError $$log | sed 's/^ *//')"; \
	done

# ---- docs (issue 3) ---------------------------------------------------------
# The API reference from the header's comments (docs/Doxyfile): HTML in
# build/docs/html, section-3 man pages in build/docs/man/man3.  Any Doxygen
# warning, an undocumented public symbol included, fails the target and
# leaves no build/docs behind (install copies the man pages only when they
# were built).  MAN_LINKS also writes a page for every struct member
# (free.3, flags.3, ...) that would shadow other manuals once installed; only
# eevp.h.3 and the eevp_* / EEVP_* pages are kept, members stay on their
# struct's page.
DOXYGEN ?= doxygen

docs: deps-docs
	rm -rf build/docs
	( cat docs/Doxyfile; echo "PROJECT_NUMBER = $(VERSION)" ) | $(DOXYGEN) - \
	  || { rm -rf build/docs; exit 1; }
	find build/docs/man/man3 -type f ! -name eevp.h.3 ! -name 'eevp_*.3' \
	  ! -name 'EEVP_*.3' -delete

# ---- install ----------------------------------------------------------------
install: all
	install -d $(DESTDIR)$(libdir) $(DESTDIR)$(includedir) $(DESTDIR)$(libdir)/pkgconfig
	install -m 644 include/eevp.h $(DESTDIR)$(includedir)/eevp.h
	install -m 755 $(SHARED) $(DESTDIR)$(libdir)/libeevp.so.$(VERSION)
	ln -sf libeevp.so.$(VERSION) $(DESTDIR)$(libdir)/$(SONAME)
	ln -sf $(SONAME) $(DESTDIR)$(libdir)/libeevp.so
	install -m 644 $(STATIC) $(DESTDIR)$(libdir)/libeevp.a
	$(PC_SED) eevp.pc.in > $(DESTDIR)$(libdir)/pkgconfig/eevp.pc
	chmod 644 $(DESTDIR)$(libdir)/pkgconfig/eevp.pc
	install -d $(DESTDIR)$(CMAKE_PKGDIR)
	$(CMAKE_SED) src/cmake/eevpConfig.cmake.in > $(DESTDIR)$(CMAKE_PKGDIR)/eevpConfig.cmake
	$(CMAKE_SED) src/cmake/eevpConfigVersion.cmake.in > $(DESTDIR)$(CMAKE_PKGDIR)/eevpConfigVersion.cmake
	chmod 644 $(DESTDIR)$(CMAKE_PKGDIR)/eevpConfig.cmake $(DESTDIR)$(CMAKE_PKGDIR)/eevpConfigVersion.cmake
	if [ -d build/docs/man/man3 ]; then \
	  install -d $(DESTDIR)$(mandir)/man3 && \
	  install -m 644 build/docs/man/man3/*.3 $(DESTDIR)$(mandir)/man3/; \
	fi
	if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ] && command -v ldconfig >/dev/null; then ldconfig; fi

uninstall:
	rm -f $(DESTDIR)$(includedir)/eevp.h \
	  $(DESTDIR)$(libdir)/libeevp.so.$(VERSION) $(DESTDIR)$(libdir)/$(SONAME) \
	  $(DESTDIR)$(libdir)/libeevp.so $(DESTDIR)$(libdir)/libeevp.a \
	  $(DESTDIR)$(libdir)/pkgconfig/eevp.pc
	rm -f $(DESTDIR)$(CMAKE_PKGDIR)/eevpConfig.cmake $(DESTDIR)$(CMAKE_PKGDIR)/eevpConfigVersion.cmake
	rmdir $(DESTDIR)$(CMAKE_PKGDIR) 2>/dev/null || true
	rm -f $(DESTDIR)$(mandir)/man3/eevp.h.3 $(DESTDIR)$(mandir)/man3/eevp_*.3 \
	  $(DESTDIR)$(mandir)/man3/EEVP_*.3
	if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ] && command -v ldconfig >/dev/null; then ldconfig; fi

clean:
	rm -rf build lib eevp.pc tests/check_eevp $(EXAMPLES) examples/tinylm/tinylm tests/bench/bench \
	  examples/mpi_vocab_parallel

# ---- CMake package, release tarball -----------------------------------------
# make install writes a CMake package beside eevp.pc: eevpConfig.cmake (the
# imported targets eevp::eevp and eevp::eevp_static) and
# eevpConfigVersion.cmake (SameMajorVersion) in $(libdir)/cmake/eevp, from
# the templates in src/cmake/ with sed, like eevp.pc: installing needs no
# CMake.  The config computes its prefix from its own location:
# CMAKE_TO_PREFIX is the ../ path from $(libdir)/cmake/eevp up to $(prefix)
# (../../.. for the default libdir, one more per level of a deeper libdir
# such as lib/x86_64-linux-gnu); a libdir outside the prefix leaves it empty,
# and the config then holds absolute paths (that install cannot be moved).
CMAKE ?= cmake
CMAKE_PKGDIR = $(libdir)/cmake/eevp
eevp_empty :=
eevp_space := $(eevp_empty) $(eevp_empty)
CMAKE_LIBDIR_REL = $(call path_below,$(prefix),$(libdir))
CMAKE_INCLUDEDIR_REL = $(call path_below,$(prefix),$(includedir))
CMAKE_TO_PREFIX = $(if $(CMAKE_LIBDIR_REL),$(subst $(eevp_space),/,$(patsubst %,..,$(subst /, ,$(CMAKE_LIBDIR_REL)) cmake eevp)))
SIZEOF_VOID_P = $(shell $(CC) -dM -E -x c /dev/null 2>/dev/null | sed -n 's/^\#define __SIZEOF_POINTER__ //p')
CMAKE_SED = sed -e 's|@VERSION@|$(VERSION)|g' -e 's|@VERSION_MAJOR@|$(VERSION_MAJOR)|g' \
  -e 's|@prefix@|$(prefix)|g' -e 's|@CMAKEDIR@|$(CMAKE_PKGDIR)|g' \
  -e 's|@CONFIG_TO_PREFIX@|$(CMAKE_TO_PREFIX)|g' \
  -e 's|@CMAKE_LIBDIR@|$(if $(CMAKE_TO_PREFIX),$${_eevp_prefix}/$(CMAKE_LIBDIR_REL),$(libdir))|g' \
  -e 's|@CMAKE_INCLUDEDIR@|$(if $(CMAKE_INCLUDEDIR_REL),$${_eevp_prefix}/$(CMAKE_INCLUDEDIR_REL),$(includedir))|g' \
  -e 's|@SIZEOF_VOID_P@|$(SIZEOF_VOID_P)|g'

# The installed tree as a user meets it (tests/check_install.sh): a staged
# `make install`, examples/cmake built with CMake against it (hello.c on
# eevp::eevp and on eevp::eevp_static, both run), find_package version
# requests (1.0 found, 2.0 refused), then the tree moved elsewhere:
# `pkg-config --define-prefix` and the CMake config must both follow it.
CMAKE_CHECK_DIR = $(CURDIR)/build/check-cmake

.PHONY: check-cmake dist distcheck

check-cmake: all
	rm -rf $(CMAKE_CHECK_DIR)
	$(MAKE) install DESTDIR=$(CMAKE_CHECK_DIR)/stage
	CMAKE='$(CMAKE)' CC='$(CC)' PKG_CONFIG='$(PKG_CONFIG)' sh tests/check_install.sh \
	  '$(CMAKE_CHECK_DIR)' '$(prefix)' '$(libdir)' '$(includedir)' '$(VERSION)'

# make dist: build/libeevp-$(VERSION).tar.gz (DIST_DIR=. puts it here), the
# tracked files (git ls-files) under libeevp-$(VERSION)/, as they are in the
# working tree; it says when uncommitted changes go in and which untracked
# files stay out.  Owners, modes and times are normalised (times: the last
# commit's), so the same tree gives the same tarball.  Making one needs the
# git checkout; the unpacked tarball builds, tests and checks its licences
# without .git.
# make distcheck: the tarball holds exactly those files, and `make
# $(DISTCHECK_TARGETS)` passes in it, unpacked into a temporary directory
# (kept when it fails).  CI runs it; the full `make check` there took about a
# minute on two busy cores (DISTCHECK_TARGETS="all check-licence" for less).
DIST_NAME = libeevp-$(VERSION)
DIST_DIR ?= build
DIST_TARBALL = $(DIST_DIR)/$(DIST_NAME).tar.gz
DISTCHECK_TARGETS ?= check

dist:
	@if [ ! -e .git ] || ! git rev-parse --git-dir >/dev/null 2>&1; then \
	  echo "make dist: not a git checkout (git ls-files names the files to ship)"; exit 1; fi
	@mkdir -p build $(DIST_DIR)
	@git ls-files > build/dist-files
	@missing=$$(while IFS= read -r f; do [ -e "$$f" ] || echo "  $$f"; done < build/dist-files); \
	if [ -n "$$missing" ]; then echo "make dist: tracked files missing from the tree:"; \
	  echo "$$missing"; exit 1; fi
	@git ls-files --others --exclude-standard | sed 's/^/make dist: untracked, left out: /'
	@git diff --quiet HEAD -- || echo "make dist: uncommitted changes to tracked files go in"
	tar --create --file=- --verbatim-files-from --files-from=build/dist-files --sort=name \
	  --owner=0 --group=0 --numeric-owner --mode=u+rw,go=rX \
	  --mtime=@$$(git log -1 --format=%ct) --transform='s|^|$(DIST_NAME)/|' \
	  | gzip -9n > $(DIST_TARBALL).tmp
	mv $(DIST_TARBALL).tmp $(DIST_TARBALL)
	@echo "$(DIST_TARBALL): $$(wc -l < build/dist-files) files, $$(du -k $(DIST_TARBALL) | cut -f1) KB"

distcheck: dist
	@set -e; export LC_ALL=C; \
	tmp=$$(mktemp -d "$${TMPDIR:-/tmp}/libeevp-distcheck.XXXXXX"); \
	tar -tzf $(DIST_TARBALL) | sed -n 's|^$(DIST_NAME)/||p' | sort > $$tmp/listed; \
	sort build/dist-files > $$tmp/tracked; \
	if ! cmp -s $$tmp/tracked $$tmp/listed; then \
	  echo "distcheck: the tarball's files differ from git ls-files:"; \
	  diff $$tmp/tracked $$tmp/listed | head -20; exit 1; fi; \
	tar -xzf $(DIST_TARBALL) -C $$tmp; \
	test ! -e $$tmp/$(DIST_NAME)/.git; \
	echo "== distcheck: make $(DISTCHECK_TARGETS) in $$tmp/$(DIST_NAME)"; \
	if $(MAKE) -C $$tmp/$(DIST_NAME) $(DISTCHECK_TARGETS); then \
	  rm -rf $$tmp; echo "distcheck: $(DIST_TARBALL) builds and passes make $(DISTCHECK_TARGETS)"; \
	else echo "distcheck: failed; the unpacked tree is kept in $$tmp"; exit 1; fi
