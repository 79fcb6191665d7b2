package veil.privacy_test

# R1, forward only: private_windows.rego. Helpers are in fixtures_test.rego.

import rego.v1

import data.veil.privacy

# ---- a row is private iff its actor was in a private group at its time -----------------

test_member_of_private_group_after_start_is_private if {
	result := privacy.decision with input as query([row(0, "ann@contoso.com", t0 + hour)])
		with data.veil.groups as groups
		with data.veil.privacy_groups as {"finance": private_from_t0}
	result.private_rows == {0}
}

test_activity_before_group_was_added_is_visible if {
	result := privacy.decision with input as query([row(0, "ann@contoso.com", t0 - 1)])
		with data.veil.groups as groups
		with data.veil.privacy_groups as {"finance": private_from_t0}
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

test_non_member_is_visible if {
	result := privacy.decision with input as query([row(0, "carl@contoso.com", t0 + hour)])
		with data.veil.groups as groups
		with data.veil.privacy_groups as {"finance": private_from_t0}
	result.private_rows == set()
}

test_group_that_is_not_private_hides_nothing if {
	result := privacy.decision with input as query([row(0, "ann@contoso.com", t0 + hour)])
		with data.veil.groups as groups
		with data.veil.privacy_groups as {}
	result.private_rows == set()
}

test_private_group_that_was_never_imported_hides_nothing if {
	result := privacy.decision with input as query([row(0, "ann@contoso.com", t0 + hour)])
		with data.veil.groups as {}
		with data.veil.privacy_groups as {"finance": private_from_t0}
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

# ---- a window is [start, end) ------------------------------------------------------------

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

# ---- members who left ----------------------------------------------------------------------

test_member_who_left_stays_private_for_the_time_they_were_in if {
	result := privacy.decision with input as query([
		row(0, "ann@contoso.com", t0 + hour),
		row(1, "ann@contoso.com", t0 + (3 * hour)),
		row(2, "ann@contoso.com", t0 - hour),
	])
		with data.veil.groups as {"finance": {"name": "Finance", "members": {}, "former_members": {"ann@contoso.com": t0 + (2 * hour)}}}
		with data.veil.privacy_groups as {"finance": private_from_t0}
	result.private_rows == {0}
}

test_member_who_left_before_the_group_was_private_is_visible if {
	result := privacy.decision with input as query([row(0, "ann@contoso.com", t0 + hour)])
		with data.veil.groups as {"finance": {"name": "Finance", "members": {}, "former_members": {"ann@contoso.com": t0 - hour}}}
		with data.veil.privacy_groups as {"finance": private_from_t0}
	result.private_rows == set()
}

test_member_who_left_a_closed_window_is_private_until_it_closed if {
	result := privacy.decision with input as query([
		row(0, "ann@contoso.com", t0 + hour),
		row(1, "ann@contoso.com", t0 + (2 * hour)),
	])
		with data.veil.groups as {"finance": {"name": "Finance", "members": {}, "former_members": {"ann@contoso.com": t0 + (5 * hour)}}}
		with data.veil.privacy_groups as {"finance": [{"start_ns": t0, "end_ns": t0 + (2 * hour)}]}
	result.private_rows == {0}
}

# ---- a row is judged by its own actor and type, never by the other rows --------------------

test_same_actor_as_user_and_as_application_is_judged_by_each_row_type if {
	result := privacy.decision with input as query([
		app_row(0, "svc-sync", t0 + hour),
		row(1, "svc-sync", t0 + hour),
	])
		with data.veil.managed_domains as ["contoso.com"]
		with data.veil.privacy_groups as {"application": private_from_t0}
	result.private_rows == {0}
}

test_member_windows_apply_to_the_actor_of_either_type if {
	result := privacy.decision with input as query([
		app_row(0, "svc-sync", t0 + hour),
		row(1, "svc-sync", t0 + hour),
		app_row(2, "svc-sync", t0 - hour),
	])
		with data.veil.groups as {"robots": {"name": "Robots", "members": {"svc-sync": true}}}
		with data.veil.privacy_groups as {"robots": private_from_t0}
	result.private_rows == {0, 1}
}

# ---- the fast path's entry point: actor_windows ------------------------------------------

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
			"guest@fabrikam.com": [[t0 + hour, forever]],
		},
		"application": {"svc-app": [[t0 - hour, t0]]},
	}
}

test_actor_windows_of_an_external_member_list_member_windows_first if {
	result := privacy.actor_windows with input as query([row(0, "guest@fabrikam.com", t0)])
		with data.veil.groups as {"finance": {"name": "Finance", "members": {"guest@fabrikam.com": true}}}
		with data.veil.managed_domains as ["contoso.com"]
		with data.veil.privacy_groups as {
			"finance": [{"start_ns": t0, "end_ns": t0 + hour}],
			"external": [{"start_ns": t0 + (2 * hour), "end_ns": null}],
		}
	result == {"user": {"guest@fabrikam.com": [[t0, t0 + hour], [t0 + (2 * hour), forever]]}, "application": {}}
}

test_actor_windows_leave_out_actors_without_a_window if {
	result := privacy.actor_windows with input as query([row(0, "ann@contoso.com", t0), row(1, "carl@contoso.com", t0)])
		with data.veil.groups as {"finance": {"name": "Finance", "members": {}, "former_members": {"ann@contoso.com": t0 - hour}}}
		with data.veil.privacy_groups as {"finance": private_from_t0, "application": []}
	result == {"user": {}, "application": {}}
}

test_windows_of_answer_actor_is_actor_windows_flattened if {
	result := privacy.windows_of_answer_actor with input as query([row(0, "ann@contoso.com", t0), app_row(1, "svc-app", t0)])
		with data.veil.groups as groups
		with data.veil.privacy_groups as {"finance": private_from_t0, "application": private_from_t0}
	result == {
		["user", "ann@contoso.com"]: [[t0, forever]],
		["application", "svc-app"]: [[t0, forever]],
	}
}
