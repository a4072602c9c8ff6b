# libeevp - GNU Makefile.  Targets: all check check-asan demo install uninstall
# deps clean.  Version numbers come from include/eevp.h, the one source of truth.

VERSION_MAJOR := $(shell sed -n 's/^\#define EEVP_VERSION_MAJOR \([0-9]*\).*/\1/p' include/eevp.h)
VERSION_MINOR := $(shell sed -n 's/^\#define EEVP_VERSION_MINOR \([0-9]*\).*/\1/p' include/eevp.h)
VERSION_PATCH := $(shell sed -n 's/^\#define EEVP_VERSION_PATCH \([0-9]*\).*/\1/p' include/eevp.h)
VERSION := $(VERSION_MAJOR).$(VERSION_MINOR).$(VERSION_PATCH)

PREFIX ?= /usr/local
prefix ?= $(PREFIX)
exec_prefix ?= $(prefix)
libdir ?= $(exec_prefix)/lib
includedir ?= $(prefix)/include
DESTDIR ?=

CC ?= cc
PKG_CONFIG ?= pkg-config

# Debian packages the build and the tests need; `make deps` installs the
# missing ones.
DEB_PACKAGES := libopenblas-dev check pkg-config python3-numpy g++

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

.PHONY: all check check-asan demo examples install uninstall deps clean

all: $(SHARED) lib/$(SONAME) lib/libeevp.so $(STATIC) eevp.pc

build/%.o: src/%.c include/eevp.h $(wildcard src/*.h) | build
	$(CC) $(LIB_CFLAGS) -c $< -o $@

build lib:
	mkdir -p $@

$(SHARED): $(OBJS) src/libeevp.vers | lib
	$(CC) -shared -Wl,-soname,$(SONAME) -Wl,--version-script=src/libeevp.vers \
	  -Wl,--no-undefined -o $@ $(OBJS) $(BLAS_LIBS) -lm $(LDFLAGS)

lib/$(SONAME): $(SHARED)
	ln -sf libeevp.so.$(VERSION) $@

lib/libeevp.so: lib/$(SONAME)
	ln -sf $(SONAME) $@

$(STATIC): $(OBJS) | lib
	rm -f $@
	$(AR) rcs $@ $(OBJS)

PC_SED = sed -e 's|@prefix@|$(prefix)|' -e 's|@exec_prefix@|$(exec_prefix)|' \
  -e 's|@libdir@|$(libdir)|' -e 's|@includedir@|$(includedir)|' -e 's|@VERSION@|$(VERSION)|'

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

# ---- tests ------------------------------------------------------------------
tests/check_eevp: $(TEST_SRCS) tests/ref.h include/eevp.h $(SHARED) lib/libeevp.so
	$(CC) $(ALL_CFLAGS) $(CHECK_CFLAGS) -Itests -o $@ $(TEST_SRCS) \
	  -Llib -leevp -Wl,-rpath,'$$ORIGIN/../lib' $(CHECK_LIBS) -lm

check: deps
	$(MAKE) all tests/check_eevp
	CK_DEFAULT_TIMEOUT=$${CK_DEFAULT_TIMEOUT:-60} tests/check_eevp
	sh tests/check_symbols.sh
	$(MAKE) check-python check-examples

# The same suites with the library and the tests built under ASan and UBSan,
# linked statically so that the instrumented objects are the ones tested.
check-asan: deps
	rm -rf build/asan && mkdir -p build/asan
	$(CC) $(ALL_CFLAGS) $(ASAN_FLAGS) $(CHECK_CFLAGS) -Itests -o build/asan/check_eevp \
	  $(SRCS) $(TEST_SRCS) $(BLAS_LIBS) $(CHECK_LIBS) -lm
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
	  CK_DEFAULT_TIMEOUT=600 build/asan/check_eevp

# ---- examples ---------------------------------------------------------------
EXAMPLES := examples/demo examples/hello examples/minimal examples/custom_criterion

examples/%: examples/%.c include/eevp.h $(SHARED) lib/libeevp.so
	$(CC) $(ALL_CFLAGS) -o $@ $< -Llib -leevp -Wl,-rpath,'$$ORIGIN/../lib' -lm

examples: $(EXAMPLES)

demo: deps
	$(MAKE) all examples/demo
	examples/demo

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

.PHONY: check-python check-examples install-python uninstall-python

check-python: all
	$(PYTHON_TEST_ENV) EEVP_REQUIRE_NUMPY=1 $(PYTHON) $(PYTHON_UNITTEST)
	$(PYTHON_TEST_ENV) python3 $(PYTHON_UNITTEST)

check-examples: all examples
	examples/hello
	examples/minimal
	examples/custom_criterion
	$(PYTHON_TEST_ENV) $(PYTHON) examples/python_demo.py
	rm -rf $(EXAMPLE_DESTDIR)
	$(MAKE) install DESTDIR=$(EXAMPLE_DESTDIR)
	PKG_CONFIG_PATH=$(EXAMPLE_DESTDIR)$(libdir)/pkgconfig PKG_CONFIG_SYSROOT_DIR=$(EXAMPLE_DESTDIR) \
	  sh -c '$(CXX) -std=c++17 -Wall -Wextra -o $(EXAMPLE_DESTDIR)/cpp_pkgconfig \
	  examples/cpp_pkgconfig.cpp $$($(PKG_CONFIG) --cflags --libs eevp)'
	LD_LIBRARY_PATH=$(EXAMPLE_DESTDIR)$(libdir) $(EXAMPLE_DESTDIR)/cpp_pkgconfig
	cd / && env -u EEVP_LIBRARY LD_LIBRARY_PATH=$(EXAMPLE_DESTDIR)$(libdir) \
	  PYTHONPATH=$(EXAMPLE_DESTDIR)$(PYTHON_SITEDIR) $(PYTHON) -c 'import eevp; \
	  print("installed eevp", eevp.__version__, "from", eevp.__file__, "on", eevp.library_path())'

# `make install` also installs the module; the installed copy looks for the
# library in $(libdir) before the loader path.
install: install-python
uninstall: uninstall-python

install-python:
	@test -n "$(PYTHON_SITEDIR)" || { echo "PYTHON_SITEDIR is empty"; exit 1; }
	install -d $(DESTDIR)$(PYTHON_SITEDIR)/eevp
	sed -e "s|^_INSTALL_LIBDIR = None$$|_INSTALL_LIBDIR = '$(libdir)'|" \
	  src/python/eevp/__init__.py > $(DESTDIR)$(PYTHON_SITEDIR)/eevp/__init__.py
	chmod 644 $(DESTDIR)$(PYTHON_SITEDIR)/eevp/__init__.py

uninstall-python:
	@test -n "$(PYTHON_SITEDIR)" || { echo "PYTHON_SITEDIR is empty"; exit 1; }
	rm -f $(DESTDIR)$(PYTHON_SITEDIR)/eevp/__init__.py
	rm -rf $(DESTDIR)$(PYTHON_SITEDIR)/eevp/__pycache__
	-rmdir $(DESTDIR)$(PYTHON_SITEDIR)/eevp 2>/dev/null

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
	if [ -z "$(DESTDIR)" ] && command -v ldconfig >/dev/null; then ldconfig; fi

uninstall:
	rm -f $(DESTDIR)$(includedir)/eevp.h \
	  $(DESTDIR)$(libdir)/libeevp.so.$(VERSION) $(DESTDIR)$(libdir)/$(SONAME) \
	  $(DESTDIR)$(libdir)/libeevp.so $(DESTDIR)$(libdir)/libeevp.a \
	  $(DESTDIR)$(libdir)/pkgconfig/eevp.pc
	if [ -z "$(DESTDIR)" ] && command -v ldconfig >/dev/null; then ldconfig; fi

clean:
	rm -rf build lib eevp.pc tests/check_eevp $(EXAMPLES)
