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
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"

/* The schema of the installed extension, or InvalidOid when not installed. */
Oid
fsb_extension_schema(void)
{
	Oid			ext_oid = get_extension_oid(FSB_EXTENSION_NAME, true);
	Oid			nsp = InvalidOid;
	Relation	rel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tuple;

	if (!OidIsValid(ext_oid))
		return InvalidOid;

	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_oid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(ext_oid));
	scan = systable_beginscan(rel, ExtensionOidIndexId, true, NULL, 1, &key);
	tuple = systable_getnext(scan);
	if (HeapTupleIsValid(tuple))
		nsp = ((Form_pg_extension) GETSTRUCT(tuple))->extnamespace;
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return nsp;
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
 * Runs one statement and returns the rows it processed.  SPI leaves
 * CurrentMemoryContext at its procedure context; we restore the caller's, so
 * results can be copied into a longer-lived context across statements.
 */
int
fsb_spi_run(const char *sql, int nargs, Oid *types, Datum *values, const char *nulls,
			int expect)
{
	MemoryContext caller = CurrentMemoryContext;
	int			rc = SPI_execute_with_args(sql, nargs, types, values, nulls, false, 0);

	MemoryContextSwitchTo(caller);
	if (rc != expect)
		elog(ERROR, "freescout_bridge: SPI_execute_with_args returned %s for: %s",
			 SPI_result_code_string(rc), sql);
	return (int) SPI_processed;
}
