package veil.privacy_test

# The helpers every test file of the package uses: times, rows, inputs and data.veil parts.

import rego.v1

# 2024-01-01T00:00:00Z, in nanoseconds, and an hour.
t0 := 1704067200000000000

hour := 3600000000000

# The largest int64: where an open privacy interval ends.
forever := 9223372036854775807

# ---- rows and inputs ---------------------------------------------------------------------

row(i, actor, ts) := {"index": i, "id": sprintf("a%d", [i]), "actor": actor, "actor_type": "user", "ts_ns": ts}

app_row(i, app, ts) := {"index": i, "id": sprintf("a%d", [i]), "actor": app, "actor_type": "application", "ts_ns": ts}

query(rows) := {"caller": "bob@contoso.com", "request": {}, "reveal_session_id": null, "session": null, "now_ns": t0, "rows": rows}

# A live reveal session of alice's, and the input of her request that presents session `s`.
session := {"id": "rs_1", "owner": "alice@contoso.com", "expires_ns": t0 + hour, "ended": false}

reveal_query(s) := object.union(query([row(0, "ann@contoso.com", t0)]), {
	"caller": "alice@contoso.com",
	"reveal_session_id": "rs_1",
	"session": s,
})

# ---- data.veil ---------------------------------------------------------------------------

# The imported group finance, with ann as its one member.
groups := {"finance": {"name": "Finance", "members": {"ann@contoso.com": true}}}

# A group private from t0 on.
private_from_t0 := [{"start_ns": t0, "end_ns": null}]

alice := {"alice@contoso.com": true}
