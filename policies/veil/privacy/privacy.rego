# METADATA
# title: Veil activity privacy
# description: |
#   Decides, for one upstream answer at a time, which activity rows are private
#   (rules R1 and R2 of docs/rules.md, with the built-in groups `application` and `external`)
#   and whether the caller may see them through a reveal session (R4).
#   The state admins manage lives in data.veil (see policies/README.md).
package veil.privacy

import rego.v1

# A window is [from_ns, to_ns): an open privacy interval ends at the largest int64.
forever := 9223372036854775807

# METADATA
# title: The decision Veil asks for, once per upstream answer
# entrypoint: true
decision := {
	"private_rows": private_rows,
	"reveal": reveal_allowed,
	"refusals": refusals,
}

default reveal_allowed := false

reveal_allowed if {
	reveal_requested
	count(refusals) == 0
}

# ---- R2: a row whose actor or timestamp cannot be read is private -----------

private_rows contains i if some i in rows_without_actor

private_rows contains i if some i in rows_without_timestamp

rows_without_actor := [i | null in distinct_actors; some i, row in input.rows; row.actor == null]

rows_without_timestamp := [i | some i, row in input.rows; row.ts_ns == null]

# ---- R1: private iff the actor was in a private group at the row's time ------

private_rows contains i if some i in rows_in_private_window

rows_in_private_window := [i |
	some i, row in input.rows
	some window in windows_of_actor[row.actor]
	row.ts_ns >= window[0]
	row.ts_ns < window[1]
]

# Computed once per answer over the distinct actors, never per row.
distinct_actors := {row.actor | some row in input.rows}

windows_of_actor := {actor: windows |
	some actor in private_actors
	windows := array.concat(
		[window |
			some group, present in actors_present_in_group
			present[actor]
			some window in group_windows[group]
		],
		[[window[0], min([window[1], left])] |
			some group, gone in former_members_present
			left := gone[actor]
			some window in group_windows[group]
			window[0] < left
		],
	)
}

private_actors := members_present | former_members_in_answer

members_present := {actor | some present in actors_present_in_group; some actor in present}

former_members_in_answer := {actor | some gone in former_members_present; some actor, _ in gone}

# Members who left a private group stay in it up to the moment they left: {actor: left_ns}.
former_members_present := {group: gone |
	some group, _ in data.veil.privacy_groups
	former := object.get(data.veil.groups, [group, "former_members"], {})
	count(former) > 0
	gone := {actor: left | some actor in distinct_actors; left := former[actor]}
}

actors_present_in_group := {group: actors_in_group(group) | some group, _ in data.veil.privacy_groups}

group_windows := {group: [window_of(interval) | some interval in intervals] |
	some group, intervals in data.veil.privacy_groups
}

window_of(interval) := [interval.start_ns, interval.end_ns] if interval.end_ns != null

else := [interval.start_ns, forever]

# ---- Groups: imported members, and the two built-in groups ------------------

actors_in_group("application") := {row.actor | some row in input.rows; row.actor_type == "application"}

actors_in_group("external") := distinct_users - managed_users

distinct_users := {row.actor | some row in input.rows; row.actor_type == "user"}

# A user is managed when the domain of their UPN is a managed domain or a subdomain of one.
# A user actor without "@" has no domain: it is external.
managed_users := {actor |
	some actor in distinct_users
	is_string(actor)
	contains(actor, "@")
	strings.any_suffix_match(actor, managed_suffixes)
}

actors_in_group(group) := {actor | some actor in distinct_actors; members[actor]} if {
	not group in {"application", "external"}
	members := data.veil.groups[group].members
}

managed_suffixes := {suffix |
	some domain in data.veil.managed_domains
	some suffix in [concat("", ["@", domain]), concat("", [".", domain])]
}

# ---- R4: reveal only through a live session of an admin with the permission --

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
