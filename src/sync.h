/*
 * sync.h
 *		Reconciliation with FreeScout, run by the worker.
 */
#ifndef FSB_SYNC_H
#define FSB_SYNC_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "http_engine.h"

extern bool sync_wanted(TimestampTz now);
extern TimestampTz sync_next_at(void);
extern void sync_database_step(TimestampTz now);
extern HttpRequest *sync_first_request(void);
extern bool sync_owns(const HttpRequest *req);
extern HttpRequest *sync_on_response(HttpRequest *req);
extern void sync_abort_fetch(const char *why);
extern void sync_publish_result(void);
extern void sync_forget_result(void);

#endif
