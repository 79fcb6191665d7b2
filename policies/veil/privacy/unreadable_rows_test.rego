package veil.privacy_test

# R2, fail closed: unreadable_rows.rego. Helpers are in fixtures_test.rego.

import rego.v1

import data.veil.privacy

test_row_without_actor_is_private if {
	result := privacy.decision with input as query([row(0, null, t0), row(1, "carl@contoso.com", t0)])
		with data.veil.privacy_groups as {}
	result.private_rows == {0}
}

test_row_without_timestamp_is_private if {
	result := privacy.decision with input as query([row(0, "carl@contoso.com", null), row(1, "carl@contoso.com", t0)])
		with data.veil.privacy_groups as {}
	result.private_rows == {0}
}

test_unreadable_rows_are_private_without_any_privacy_group if {
	result := privacy.decision with input as query([
		row(0, null, t0),
		row(1, "carl@contoso.com", null),
		row(2, "carl@contoso.com", t0),
	])
	result.private_rows == {0, 1}
}

test_unreadable_application_rows_are_private if {
	result := privacy.decision with input as query([app_row(0, null, t0), app_row(1, "svc-app", null), app_row(2, "svc-app", t0)])
	result.private_rows == {0, 1}
}
