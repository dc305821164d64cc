# freescout_bridge: a PGXS build.  `make && make install`, then `make installcheck`
# runs the regression suite in a temporary instance with the worker preloaded
# (see test/regress.conf) and the TAP tests in test/t.

EXTENSION    = freescout_bridge
MODULE_big   = freescout_bridge
OBJS         = src/settings.o src/shared_state.o src/worker.o src/http_engine.o \
               src/freescout_api.o src/delivery.o src/outbox.o src/enqueue.o \
               src/render.o src/ticket_request.o src/webhook.o src/metrics.o \
               src/json_util.o src/catalog.o src/sync.o
DATA         = sql/freescout_bridge--1.0.sql
PGFILEDESC   = "freescout_bridge - SIEM to FreeScout helpdesk bridge"

PG_CPPFLAGS  = -Isrc
PG_CFLAGS    = -Wall -Wextra -Werror -Wno-unused-parameter -Wno-missing-field-initializers
SHLIB_LINK   = -lcurl -lcjson -lcrypto

REGRESS      = setup contract schema settings render outbound incidents manual \
               webhook sync security
REGRESS_OPTS = --temp-instance=tmp_check --temp-config=test/regress.conf
TAP_TESTS    = 1
PROVE_TESTS  = test/t/*.pl

EXTRA_CLEAN  = results tmp_check log regression.diffs regression.out

# no JIT bitcode: nothing here is worth inlining into queries
override with_llvm = no

PG_CONFIG   ?= pg_config
PGXS        := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)
