package veil.privacy_test

# The entry point: decision.rego. Helpers are in fixtures_test.rego.

import rego.v1

import data.veil.privacy

test_decision_on_an_empty_answer_is_complete if {
	result := privacy.decision with input as query([])
	result == {"private_rows": set(), "reveal": false, "refusals": set()}
}

test_decision_private_rows_unite_r1_and_r2 if {
	result := privacy.decision with input as query([
		row(0, "ann@contoso.com", t0 + hour),
		row(1, null, t0 + hour),
		row(2, "carl@contoso.com", null),
		row(3, "carl@contoso.com", t0 + hour),
	])
		with data.veil.groups as groups
		with data.veil.privacy_groups as {"finance": private_from_t0}
	result.private_rows == {0, 1, 2}
}

test_decision_of_an_allowed_reveal_keeps_the_private_rows if {
	result := privacy.decision with input as reveal_query(session)
		with data.veil.groups as groups
		with data.veil.privacy_groups as {"finance": [{"start_ns": t0 - hour, "end_ns": null}]}
		with data.veil.admins as alice
		with data.veil.viewers as alice
	result == {"private_rows": {0}, "reveal": true, "refusals": set()}
}
