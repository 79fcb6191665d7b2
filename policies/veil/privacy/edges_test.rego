package veil.privacy_test

# Edge cases of the shipped rules. Helpers (t0, hour, row, app_row, query, groups, session,
# reveal_query) are the ones of privacy_test.rego, in the same package.

import rego.v1

import data.veil.privacy

# ---- R1: a window is [start, end) ------------------------------------------------------

test_activity_at_the_moment_the_group_was_added_is_private if {
	result := privacy.decision with input as query([row(0, "ann@contoso.com", t0)])
		with data.veil.groups as groups
		with data.veil.privacy_groups as {"finance": [{"start_ns": t0, "end_ns": t0 + hour}]}
	result.private_rows == {0}
}

test_activity_at_the_moment_the_group_was_removed_is_visible if {
	result := privacy.decision with input as query([row(0, "ann@contoso.com", t0 + hour)])
		with data.veil.groups as groups
		with data.veil.privacy_groups as {"finance": [{"start_ns": t0, "end_ns": t0 + hour}]}
	result.private_rows == set()
}

test_member_of_two_private_groups_is_private_in_either_window if {
	result := privacy.decision with input as query([
		row(0, "ann@contoso.com", t0 + hour),
		row(1, "ann@contoso.com", t0 + (3 * hour)),
		row(2, "ann@contoso.com", t0 + (5 * hour)),
	])
		with data.veil.groups as object.union(groups, {"board": {"name": "Board", "members": {"ann@contoso.com": true}}})
		with data.veil.privacy_groups as {
			"finance": [{"start_ns": t0, "end_ns": t0 + (2 * hour)}],
			"board": [{"start_ns": t0 + (4 * hour), "end_ns": null}],
		}
	result.private_rows == {0, 2}
}

test_private_group_that_was_never_imported_hides_nothing if {
	result := privacy.decision with input as query([row(0, "ann@contoso.com", t0 + hour)])
		with data.veil.groups as {}
		with data.veil.privacy_groups as {"finance": [{"start_ns": t0, "end_ns": null}]}
	result.private_rows == set()
}

test_application_row_is_private_only_inside_the_application_window if {
	result := privacy.decision with input as query([
		app_row(0, "11111111-2222-3333-4444-555555555555", t0 - 1),
		app_row(1, "11111111-2222-3333-4444-555555555555", t0 + hour),
	])
		with data.veil.privacy_groups as {"application": [{"start_ns": t0, "end_ns": null}]}
	result.private_rows == {1}
}

# ---- R2: fail closed, whatever the groups ----------------------------------------------

test_unreadable_rows_are_private_without_any_privacy_group if {
	result := privacy.decision with input as query([
		row(0, null, t0),
		row(1, "carl@contoso.com", null),
		row(2, "carl@contoso.com", t0),
	])
	result.private_rows == {0, 1}
}

# ---- the decision's shape --------------------------------------------------------------

test_decision_on_an_empty_answer_is_complete if {
	result := privacy.decision with input as query([])
	result == {"private_rows": set(), "reveal": false, "refusals": set()}
}

# ---- R4: every reason a reveal is refused is given -------------------------------------

test_reveal_refusal_lists_every_reason if {
	expired_foreign_ended := object.union(session, {"owner": "mallory@contoso.com", "ended": true})
	result := privacy.decision with input as object.union(reveal_query(expired_foreign_ended), {"now_ns": t0 + hour})
		with data.veil.admins as {}
		with data.veil.viewers as {}
	result.reveal == false
	result.refusals == {
		"the reveal session belongs to another principal",
		"the reveal session has ended",
		"the reveal session has expired",
		"the caller is not an admin",
		"the caller does not hold the view-private permission",
	}
}

# ---- the fast path's entry point: actor_windows -----------------------------------------

test_actor_windows_by_type_and_actor if {
	result := privacy.actor_windows with input as query([
		row(0, "ann@contoso.com", t0),
		row(1, "guest@fabrikam.com", t0),
		row(2, "carl@contoso.com", t0),
		app_row(3, "svc-app", t0),
		row(4, null, t0),
	])
		with data.veil.groups as groups
		with data.veil.managed_domains as ["contoso.com"]
		with data.veil.privacy_groups as {
			"finance": [{"start_ns": t0, "end_ns": t0 + hour}],
			"external": [{"start_ns": t0 + hour, "end_ns": null}],
			"application": [{"start_ns": t0 - hour, "end_ns": t0}],
		}
	result == {
		"user": {
			"ann@contoso.com": [[t0, t0 + hour]],
			"guest@fabrikam.com": [[t0 + hour, 9223372036854775807]],
		},
		"application": {"svc-app": [[t0 - hour, t0]]},
	}
}

# A row's privacy depends on its own actor and type, never on the other rows of the answer.
test_same_actor_as_user_and_as_application_is_judged_by_each_row_type if {
	result := privacy.decision with input as query([
		app_row(0, "svc-sync", t0 + hour),
		row(1, "svc-sync", t0 + hour),
	])
		with data.veil.managed_domains as ["contoso.com"]
		with data.veil.privacy_groups as {"application": [{"start_ns": t0, "end_ns": null}]}
	result.private_rows == {0}
}

test_external_window_does_not_apply_to_an_application_row if {
	result := privacy.decision with input as query([
		app_row(0, "svc-sync", t0 + hour),
		row(1, "svc-sync", t0 + hour),
	])
		with data.veil.managed_domains as ["contoso.com"]
		with data.veil.privacy_groups as {"external": [{"start_ns": t0, "end_ns": null}]}
	result.private_rows == {1}
}
