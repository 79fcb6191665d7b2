package veil.privacy_test

# What R1 and the built-in groups share: windows.rego. Helpers are in fixtures_test.rego.

import rego.v1

import data.veil.privacy

test_group_windows_close_open_intervals_at_the_largest_int64 if {
	result := privacy.group_windows with data.veil.privacy_groups as {
		"finance": [{"start_ns": t0, "end_ns": t0 + hour}, {"start_ns": t0 + (2 * hour), "end_ns": null}],
		"external": [],
	}
	result == {"finance": [[t0, t0 + hour], [t0 + (2 * hour), forever]], "external": []}
}

test_actors_of_type_are_the_distinct_readable_actors_by_type if {
	result := privacy.actors_of_type with input as query([
		row(0, "ann@contoso.com", t0),
		row(1, "ann@contoso.com", t0 + hour),
		app_row(2, "svc-app", t0),
		row(3, null, t0),
		row(4, "svc-app", null),
	])
	result == {"user": {"ann@contoso.com", "svc-app"}, "application": {"svc-app"}}
}
