package veil.privacy_test

# The built-in groups application and external: built_in_groups.rego. Helpers are in
# fixtures_test.rego.

import rego.v1

import data.veil.privacy

# ---- application -------------------------------------------------------------------------

test_application_group_hides_application_rows if {
	result := privacy.decision with input as query([
		app_row(0, "11111111-2222-3333-4444-555555555555", t0 + hour),
		row(1, "carl@contoso.com", t0 + hour),
	])
		with data.veil.privacy_groups as {"application": private_from_t0}
	result.private_rows == {0}
}

test_application_row_is_private_only_inside_the_application_window if {
	result := privacy.decision with input as query([
		app_row(0, "11111111-2222-3333-4444-555555555555", t0 - 1),
		app_row(1, "11111111-2222-3333-4444-555555555555", t0 + hour),
	])
		with data.veil.privacy_groups as {"application": private_from_t0}
	result.private_rows == {1}
}

test_application_group_imported_by_that_name_is_still_the_built_in_one if {
	result := privacy.decision with input as query([row(0, "ann@contoso.com", t0 + hour), app_row(1, "svc-app", t0 + hour)])
		with data.veil.groups as {"application": {"name": "Apps", "members": {"ann@contoso.com": true}}}
		with data.veil.privacy_groups as {"application": private_from_t0}
	result.private_rows == {1}
}

# ---- external ----------------------------------------------------------------------------

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
		with data.veil.privacy_groups as {"external": private_from_t0}
	result.private_rows == {0, 3, 5, 7}
}

test_external_group_without_managed_domains_hides_every_user if {
	result := privacy.decision with input as query([row(0, "carl@contoso.com", t0 + hour), app_row(1, "svc-app", t0 + hour)])
		with data.veil.managed_domains as []
		with data.veil.privacy_groups as {"external": private_from_t0}
	result.private_rows == {0}
}

test_external_window_does_not_apply_to_an_application_row if {
	result := privacy.decision with input as query([
		app_row(0, "svc-sync", t0 + hour),
		row(1, "svc-sync", t0 + hour),
	])
		with data.veil.managed_domains as ["contoso.com"]
		with data.veil.privacy_groups as {"external": private_from_t0}
	result.private_rows == {1}
}

test_row_without_actor_is_private_while_external_is_private if {
	result := privacy.decision with input as query([
		row(0, null, t0 + hour),
		row(1, "carl@contoso.com", t0 + hour),
		row(2, "guest@fabrikam.com", t0 + hour),
	])
		with data.veil.managed_domains as ["contoso.com"]
		with data.veil.privacy_groups as {"external": private_from_t0}
	result.private_rows == {0, 2}
}

test_external_users_are_the_users_outside_the_managed_domains if {
	result := privacy.external_users with input as query([
		row(0, "guest@fabrikam.com", t0),
		row(1, "dana@eu.contoso.com", t0),
		row(2, "svc.contoso.com", t0),
		app_row(3, "app@fabrikam.com", t0),
		row(4, null, t0),
	])
		with data.veil.managed_domains as ["contoso.com"]
	result == {"guest@fabrikam.com", "svc.contoso.com"}
}
