# freescout_bridge: a PGXS build.  `make && make install`, then `make installcheck`
# runs the regression suite in a temporary instance with the worker preloaded
# (test/regress.conf), against the FreeScout simulator that test/run starts.
# test/run is the whole suite; it is what README.md and CI call.

EXTENSION    = freescout_bridge
MODULE_big   = freescout_bridge
OBJS         = src/settings.o src/shared_state.o src/worker.o src/http_engine.o \
               src/freescout_api.o src/delivery.o src/outbox.o src/enqueue.o \
               src/render.o src/ticket_request.o src/webhook.o src/metrics.o \
               src/json_util.o src/sql_helpers.o src/sync.o
DATA         = sql/freescout_bridge--1.0.sql
PGFILEDESC   = "freescout_bridge - SIEM to FreeScout helpdesk bridge"

PG_CPPFLAGS  = -Isrc
# -Wextra minus unused-parameter: PostgreSQL 15's own headers (fmgr.h, ilist.h)
# trip it, as do hooks and callbacks whose signatures are fixed.
PG_CFLAGS    = -Wall -Wextra -Werror -Wno-unused-parameter
SHLIB_LINK   = -lcurl -lcjson -lcrypto

REGRESS      = setup contract schema settings render outbound incidents manual \
               webhook sync security
REGRESS_OPTS = --temp-instance=tmp_check --temp-config=test/regress.conf

EXTRA_CLEAN  = results tmp_check log regression.diffs regression.out

# no JIT bitcode: nothing here is worth inlining into queries
override with_llvm = no

PG_CONFIG   ?= pg_config
PGXS        := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# PGXS tracks no header dependencies; a stale object with an old struct
# layout in shared memory is a crash waiting to happen.
$(OBJS): $(wildcard src/*.h)
