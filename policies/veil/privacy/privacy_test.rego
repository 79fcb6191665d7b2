package veil.privacy_test

import rego.v1

import data.veil.privacy

# 2024-01-01T00:00:00Z and friends, in nanoseconds
t0 := 1704067200000000000

hour := 3600000000000

groups := {"finance": {"name": "Finance", "members": {"ann@contoso.com": true}}}

row(i, actor, ts) := {"index": i, "id": sprintf("a%d", [i]), "actor": actor, "actor_type": "user", "ts_ns": ts}

app_row(i, app, ts) := {"index": i, "id": sprintf("a%d", [i]), "actor": app, "actor_type": "application", "ts_ns": ts}

query(rows) := {"caller": "bob@contoso.com", "request": {}, "reveal_session_id": null, "session": null, "now_ns": t0, "rows": rows}

# ---- R1: forward only --------------------------------------------------------------------

test_member_of_private_group_after_start_is_private if {
	result := privacy.decision with input as query([row(0, "ann@contoso.com", t0 + hour)])
		with data.veil.groups as groups
		with data.veil.privacy_groups as {"finance": [{"start_ns": t0, "end_ns": null}]}
	result.private_rows == {0}
}

test_activity_before_group_was_added_is_visible if {
	result := privacy.decision with input as query([row(0, "ann@contoso.com", t0 - 1)])
		with data.veil.groups as groups
		with data.veil.privacy_groups as {"finance": [{"start_ns": t0, "end_ns": null}]}
	result.private_rows == set()
}

test_activity_after_group_was_removed_is_visible if {
	result := privacy.decision with input as query([
		row(0, "ann@contoso.com", t0 + hour),
		row(1, "ann@contoso.com", t0 + (2 * hour)),
	])
		with data.veil.groups as groups
		with data.veil.privacy_groups as {"finance": [{"start_ns": t0, "end_ns": t0 + (2 * hour)}]}
	result.private_rows == {0}
}

test_group_private_twice_hides_only_both_intervals if {
	result := privacy.decision with input as query([
		row(0, "ann@contoso.com", t0 + hour),
		row(1, "ann@contoso.com", t0 + (3 * hour)),
		row(2, "ann@contoso.com", t0 + (5 * hour)),
	])
		with data.veil.groups as groups
		with data.veil.privacy_groups as {"finance": [
			{"start_ns": t0, "end_ns": t0 + (2 * hour)},
			{"start_ns": t0 + (4 * hour), "end_ns": null},
		]}
	result.private_rows == {0, 2}
}

test_member_who_left_stays_private_for_the_time_they_were_in if {
	result := privacy.decision with input as query([
		row(0, "ann@contoso.com", t0 + hour),
		row(1, "ann@contoso.com", t0 + (3 * hour)),
		row(2, "ann@contoso.com", t0 - hour),
	])
		with data.veil.groups as {"finance": {"name": "Finance", "members": {}, "former_members": {"ann@contoso.com": t0 + (2 * hour)}}}
		with data.veil.privacy_groups as {"finance": [{"start_ns": t0, "end_ns": null}]}
	result.private_rows == {0}
}

test_member_who_left_before_the_group_was_private_is_visible if {
	result := privacy.decision with input as query([row(0, "ann@contoso.com", t0 + hour)])
		with data.veil.groups as {"finance": {"name": "Finance", "members": {}, "former_members": {"ann@contoso.com": t0 - hour}}}
		with data.veil.privacy_groups as {"finance": [{"start_ns": t0, "end_ns": null}]}
	result.private_rows == set()
}

test_non_member_is_visible if {
	result := privacy.decision with input as query([row(0, "carl@contoso.com", t0 + hour)])
		with data.veil.groups as groups
		with data.veil.privacy_groups as {"finance": [{"start_ns": t0, "end_ns": null}]}
	result.private_rows == set()
}

test_group_that_is_not_private_hides_nothing if {
	result := privacy.decision with input as query([row(0, "ann@contoso.com", t0 + hour)])
		with data.veil.groups as groups
		with data.veil.privacy_groups as {}
	result.private_rows == set()
}

# ---- R2: fail closed ---------------------------------------------------------------------

test_row_without_actor_is_private if {
	result := privacy.decision with input as query([row(0, null, t0), row(1, "carl@contoso.com", t0)])
		with data.veil.privacy_groups as {}
	result.private_rows == {0}
}

test_row_without_timestamp_is_private if {
	result := privacy.decision with input as query([row(0, "carl@contoso.com", null)])
		with data.veil.privacy_groups as {}
	result.private_rows == {0}
}

# ---- built-in groups ---------------------------------------------------------------------

test_application_group_hides_application_rows if {
	result := privacy.decision with input as query([
		app_row(0, "11111111-2222-3333-4444-555555555555", t0 + hour),
		row(1, "carl@contoso.com", t0 + hour),
	])
		with data.veil.privacy_groups as {"application": [{"start_ns": t0, "end_ns": null}]}
	result.private_rows == {0}
}

test_external_group_hides_unmanaged_users_only if {
	result := privacy.decision with input as query([
		row(0, "guest@fabrikam.com", t0 + hour),
		row(1, "carl@contoso.com", t0 + hour),
		row(2, "dana@eu.contoso.com", t0 + hour),
		row(3, "eve@notcontoso.com", t0 + hour),
		app_row(4, "app-without-domain", t0 + hour),
		row(5, "svc.contoso.com", t0 + hour),
		row(6, "x@evil.com.contoso.com", t0 + hour),
		row(7, "contoso.com@evil.com", t0 + hour),
	])
		with data.veil.managed_domains as ["contoso.com"]
		with data.veil.privacy_groups as {"external": [{"start_ns": t0, "end_ns": null}]}
	result.private_rows == {0, 3, 5, 7}
}

test_row_without_actor_is_private_while_external_is_private if {
	result := privacy.decision with input as query([
		row(0, null, t0 + hour),
		row(1, "carl@contoso.com", t0 + hour),
		row(2, "guest@fabrikam.com", t0 + hour),
	])
		with data.veil.managed_domains as ["contoso.com"]
		with data.veil.privacy_groups as {"external": [{"start_ns": t0, "end_ns": null}]}
	result.private_rows == {0, 2}
}

# ---- R4: reveal --------------------------------------------------------------------------

session := {"id": "rs_1", "owner": "alice@contoso.com", "expires_ns": t0 + hour, "ended": false}

reveal_query(s) := object.union(query([row(0, "ann@contoso.com", t0)]), {
	"caller": "alice@contoso.com",
	"reveal_session_id": "rs_1",
	"session": s,
})

test_reveal_allowed_for_permitted_admin_with_live_session if {
	result := privacy.decision with input as reveal_query(session)
		with data.veil.admins as {"alice@contoso.com": true}
		with data.veil.viewers as {"alice@contoso.com": true}
	result.reveal == true
	result.refusals == set()
}

test_reveal_refused_without_session_id if {
	result := privacy.decision with input as query([])
		with data.veil.admins as {"bob@contoso.com": true}
		with data.veil.viewers as {"bob@contoso.com": true}
	result.reveal == false
}

test_reveal_refused_for_unknown_session if {
	result := privacy.decision with input as reveal_query(null)
		with data.veil.admins as {"alice@contoso.com": true}
		with data.veil.viewers as {"alice@contoso.com": true}
	result.reveal == false
	result.refusals == {"the reveal session does not exist"}
}

test_reveal_refused_for_foreign_session if {
	result := privacy.decision with input as reveal_query(object.union(session, {"owner": "mallory@contoso.com"}))
		with data.veil.admins as {"alice@contoso.com": true}
		with data.veil.viewers as {"alice@contoso.com": true}
	result.reveal == false
	"the reveal session belongs to another principal" in result.refusals
}

test_reveal_refused_for_expired_session if {
	result := privacy.decision with input as object.union(reveal_query(session), {"now_ns": t0 + hour})
		with data.veil.admins as {"alice@contoso.com": true}
		with data.veil.viewers as {"alice@contoso.com": true}
	result.refusals == {"the reveal session has expired"}
}

test_reveal_refused_for_ended_session if {
	result := privacy.decision with input as reveal_query(object.union(session, {"ended": true}))
		with data.veil.admins as {"alice@contoso.com": true}
		with data.veil.viewers as {"alice@contoso.com": true}
	result.refusals == {"the reveal session has ended"}
}

test_reveal_refused_for_admin_without_permission if {
	result := privacy.decision with input as reveal_query(session)
		with data.veil.admins as {"alice@contoso.com": true}
		with data.veil.viewers as {}
	result.refusals == {"the caller does not hold the view-private permission"}
}

test_reveal_refused_for_viewer_who_is_no_longer_admin if {
	result := privacy.decision with input as reveal_query(session)
		with data.veil.admins as {}
		with data.veil.viewers as {"alice@contoso.com": true}
	result.refusals == {"the caller is not an admin"}
}
