# R2 — fail closed (docs/rules.md): a row Veil cannot read with certainty is private. Veil
# sends such a row with a null actor or a null time (src/veil/rows.py); this file hides it.
package veil.privacy

import rego.v1

# ---- R2: a row whose actor or timestamp cannot be read is private -----------

private_rows contains i if some i in rows_without_actor

private_rows contains i if some i in rows_without_timestamp

rows_without_actor contains i if {
	some i, row in input.rows
	row.actor == null
}

rows_without_timestamp contains i if {
	some i, row in input.rows
	row.ts_ns == null
}
