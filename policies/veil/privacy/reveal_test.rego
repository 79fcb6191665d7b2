package veil.privacy_test

# R4, the reveal decision: reveal.rego. Helpers are in fixtures_test.rego.

import rego.v1

import data.veil.privacy

test_reveal_allowed_for_permitted_admin_with_live_session if {
	result := privacy.decision with input as reveal_query(session)
		with data.veil.admins as alice
		with data.veil.viewers as alice
	result.reveal == true
	result.refusals == set()
}

test_reveal_refused_without_session_id if {
	result := privacy.decision with input as query([])
		with data.veil.admins as {"bob@contoso.com": true}
		with data.veil.viewers as {"bob@contoso.com": true}
	result.reveal == false
	result.refusals == set()
}

test_reveal_refused_for_unknown_session if {
	result := privacy.decision with input as reveal_query(null)
		with data.veil.admins as alice
		with data.veil.viewers as alice
	result.reveal == false
	result.refusals == {"the reveal session does not exist"}
}

test_reveal_refused_for_foreign_session if {
	result := privacy.decision with input as reveal_query(object.union(session, {"owner": "mallory@contoso.com"}))
		with data.veil.admins as alice
		with data.veil.viewers as alice
	result.reveal == false
	result.refusals == {"the reveal session belongs to another principal"}
}

test_reveal_refused_for_expired_session if {
	result := privacy.decision with input as object.union(reveal_query(session), {"now_ns": t0 + hour})
		with data.veil.admins as alice
		with data.veil.viewers as alice
	result.reveal == false
	result.refusals == {"the reveal session has expired"}
}

test_reveal_allowed_until_the_moment_the_session_expires if {
	result := privacy.decision with input as object.union(reveal_query(session), {"now_ns": (t0 + hour) - 1})
		with data.veil.admins as alice
		with data.veil.viewers as alice
	result.reveal == true
}

test_reveal_refused_for_ended_session if {
	result := privacy.decision with input as reveal_query(object.union(session, {"ended": true}))
		with data.veil.admins as alice
		with data.veil.viewers as alice
	result.reveal == false
	result.refusals == {"the reveal session has ended"}
}

test_reveal_refused_for_admin_without_permission if {
	result := privacy.decision with input as reveal_query(session)
		with data.veil.admins as alice
		with data.veil.viewers as {}
	result.reveal == false
	result.refusals == {"the caller does not hold the view-private permission"}
}

test_reveal_refused_for_viewer_who_is_no_longer_admin if {
	result := privacy.decision with input as reveal_query(session)
		with data.veil.admins as {}
		with data.veil.viewers as alice
	result.reveal == false
	result.refusals == {"the caller is not an admin"}
}

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
