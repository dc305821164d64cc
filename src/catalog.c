/*
 * catalog.c
 *		Where the extension lives: its schema, looked up from pg_extension.
 *
 * PostgreSQL 15 keeps get_extension_schema() static, so we read the catalog
 * ourselves.  Every caller runs inside a transaction.
 */
#include "freescout_bridge.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/indexing.h"
#include "catalog/pg_extension.h"
#include "commands/extension.h"
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
	Oid			nsp = fsb_extension_schema();

	if (!OidIsValid(nsp))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("extension \"%s\" is not installed in this database", FSB_EXTENSION_NAME),
				 errhint("Run CREATE EXTENSION %s in the SIEM database.", FSB_EXTENSION_NAME)));
	return quote_qualified_identifier(get_namespace_name(nsp), relname);
}
