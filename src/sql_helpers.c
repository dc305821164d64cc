/*
 * sql_helpers.c
 *		Plumbing shared by the files that run SQL: where the extension lives,
 *		and running one statement through SPI.
 *
 * PostgreSQL 15 keeps get_extension_schema() static, so we read pg_extension
 * ourselves.  Every caller runs inside a transaction.
 */
#include "freescout_bridge.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/indexing.h"
#include "catalog/pg_extension.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "utils/memutils.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"

/*
 * The installed extension's schema and owner; false when it is not
 * installed in this database.
 */
bool
fsb_extension_lookup(Oid *schema, Oid *owner)
{
	bool		found = false;
	Relation	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tuple;

	ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber, F_NAMEEQ,
				CStringGetDatum(FSB_EXTENSION_NAME));
	scan = systable_beginscan(rel, ExtensionNameIndexId, true, NULL, 1, &key);
	tuple = systable_getnext(scan);
	if (HeapTupleIsValid(tuple))
	{
		Form_pg_extension ext = (Form_pg_extension) GETSTRUCT(tuple);

		if (schema)
			*schema = ext->extnamespace;
		if (owner)
			*owner = ext->extowner;
		found = true;
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return found;
}

/* The schema of the installed extension, or InvalidOid when not installed. */
Oid
fsb_extension_schema(void)
{
	Oid			schema;

	return fsb_extension_lookup(&schema, NULL) ? schema : InvalidOid;
}

/* schema.relname, quoted, for an object of the extension's schema. */
char *
fsb_qualified(const char *relname)
{
	return psprintf("%s.%s", fsb_schema_quoted(), quote_identifier(relname));
}

/* The extension's schema, quoted for use in a query. */
const char *
fsb_schema_quoted(void)
{
	Oid			nsp = fsb_extension_schema();

	if (!OidIsValid(nsp))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("extension \"%s\" is not installed in this database", FSB_EXTENSION_NAME),
				 errhint("Run CREATE EXTENSION %s in the SIEM database.", FSB_EXTENSION_NAME)));
	return quote_identifier(get_namespace_name(nsp));
}

/*
 * Prepared plans of the statements this process runs, keyed by their text.
 * The worker runs the same few dozen statements thousands of times a second;
 * parsing and planning each time was most of its CPU.  The text includes the
 * schema, so a re-created extension gets new entries; plancache revalidates
 * a kept plan when the tables under it change.  Callers pass values as
 * parameters, never as literals, so the set of texts stays small.
 */
#define PLAN_CACHE_SIZE 128

typedef struct CachedStatement
{
	char	   *sql;
	int			nargs;
	Oid			types[FUNC_MAX_ARGS];
	SPIPlanPtr	plan;
} CachedStatement;

static CachedStatement plan_cache[PLAN_CACHE_SIZE];
static int	plan_cache_used = 0;

static SPIPlanPtr
cached_plan(const char *sql, int nargs, Oid *types)
{
	CachedStatement *entry;
	SPIPlanPtr	plan;

	for (int i = 0; i < plan_cache_used; i++)
	{
		entry = &plan_cache[i];
		if (entry->nargs == nargs && strcmp(entry->sql, sql) == 0 &&
			(nargs == 0 || memcmp(entry->types, types, sizeof(Oid) * nargs) == 0))
			return entry->plan;
	}
	if (plan_cache_used == PLAN_CACHE_SIZE || nargs > FUNC_MAX_ARGS)
		return NULL;			/* full: run unprepared */

	plan = SPI_prepare(sql, nargs, types);
	if (plan == NULL)
		elog(ERROR, "freescout_bridge: SPI_prepare failed (%s) for: %s",
			 SPI_result_code_string(SPI_result), sql);
	if (SPI_keepplan(plan) != 0)
		elog(ERROR, "freescout_bridge: SPI_keepplan failed");
	entry = &plan_cache[plan_cache_used++];
	entry->sql = MemoryContextStrdup(TopMemoryContext, sql);
	entry->nargs = nargs;
	if (nargs > 0)
		memcpy(entry->types, types, sizeof(Oid) * nargs);
	entry->plan = plan;
	return plan;
}

/*
 * Runs one statement and returns the rows it processed.  SPI leaves
 * CurrentMemoryContext at its procedure context; we restore the caller's, so
 * results can be copied into a longer-lived context across statements.
 */
int
fsb_spi_run(const char *sql, int nargs, Oid *types, Datum *values, const char *nulls,
			int expect)
{
	MemoryContext caller = CurrentMemoryContext;
	SPIPlanPtr	plan = cached_plan(sql, nargs, types);
	int			rc = plan ?
		SPI_execute_plan(plan, values, nulls, false, 0) :
		SPI_execute_with_args(sql, nargs, types, values, nulls, false, 0);

	MemoryContextSwitchTo(caller);
	if (rc != expect)
		elog(ERROR, "freescout_bridge: SPI_execute_with_args returned %s for: %s",
			 SPI_result_code_string(rc), sql);
	return (int) SPI_processed;
}
