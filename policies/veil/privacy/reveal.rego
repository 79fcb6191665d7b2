# R4 — explicit, audited opt-in (docs/rules.md): private rows are shown only to a request
# that carries a reveal session owned by the caller, not expired and not ended, while the
# caller is an admin and holds the view-private permission. Every reason a reveal is
# refused is given (Veil answers 403 with them).
package veil.privacy

import rego.v1

# ---- R4: reveal only through a live session of an admin with the permission --

default reveal_allowed := false

reveal_allowed if {
	reveal_requested
	count(refusals) == 0
}

reveal_requested if input.reveal_session_id != null

refusals contains "the reveal session does not exist" if {
	reveal_requested
	input.session == null
}

refusals contains "the reveal session belongs to another principal" if {
	input.session.owner != input.caller
}

refusals contains "the reveal session has ended" if input.session.ended

refusals contains "the reveal session has expired" if input.now_ns >= input.session.expires_ns

refusals contains "the caller is not an admin" if {
	reveal_requested
	not data.veil.admins[input.caller]
}

refusals contains "the caller does not hold the view-private permission" if {
	reveal_requested
	not data.veil.viewers[input.caller]
}
