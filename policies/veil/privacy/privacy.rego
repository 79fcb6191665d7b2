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

rows_without_actor contains i if {
	some i, row in input.rows
	row.actor == null
}

rows_without_timestamp contains i if {
	some i, row in input.rows
	row.ts_ns == null
}

# ---- R1: private iff the actor was in a private group at the row's time ------

private_rows contains i if some i in rows_in_private_window

rows_in_private_window contains i if {
	some i, row in input.rows
	some window in actor_windows[row.actor_type][row.actor]
	row.ts_ns >= window[0]
	row.ts_ns < window[1]
}

# METADATA
# title: The private windows of each actor of the answer, by actor type
# description: |
#   {actor_type: {actor: [[from_ns, to_ns], ...]}}: a row of that actor and type is private
#   when its time is in one of the windows. It reads only the rows' actor and actor_type and
#   data.veil, so Veil computes it once per actor for each policy and state version, caches
#   it, and applies it to every row itself (see policies/README.md, "The fast path").
# entrypoint: true
actor_windows := {kind: windows_by_actor |
	some kind, actors in actors_of_type
	windows_by_actor := {actor: windows |
		some actor in actors
		from_groups := object.get(member_windows, actor, [])
		windows := array.concat(from_groups, built_in_windows(actor, kind))
		count(windows) > 0
	}
}

# Windows of the imported private groups each actor is in, and of those they left: a member
# who left stays private up to the moment they left. Only actors with such a window appear.
member_windows := {actor: windows |
	some actor in members_present | former_members_present
	windows := array.concat(
		[window |
			some group, present in members_by_group
			present[actor]
			some window in group_windows[group]
		],
		[[window[0], min([window[1], left])] |
			some group, gone in former_members_by_group
			left := gone[actor]
			some window in group_windows[group]
			window[0] < left
		],
	)
}

# {group: the answer's actors who are members} for each imported private group.
members_by_group := {group: present |
	some group, _ in data.veil.privacy_groups
	not group in {"application", "external"}
	members := object.get(data.veil.groups, [group, "members"], {})
	present := {actor | some actor in answer_actors; members[actor]}
}

# {group: {actor: left_ns}} for the answer's actors who left an imported private group.
former_members_by_group := {group: gone |
	some group, _ in data.veil.privacy_groups
	former := object.get(data.veil.groups, [group, "former_members"], {})
	count(former) > 0
	gone := {actor: left | some actor in answer_actors; left := former[actor]}
}

members_present := {actor | some present in members_by_group; some actor in present}

former_members_present := {actor | some gone in former_members_by_group; some actor, _ in gone}

# The answer's distinct actors by actor type. The rules above work per group and per distinct
# actor, never per row, with the data.veil lookups hoisted out of their comprehensions.
actors_of_type := {kind: {actor |
	some row in input.rows
	row.actor_type == kind
	actor := row.actor
	is_string(actor)
} |
	some kind in {"user", "application"}
}

answer_actors := actors_of_type.user | actors_of_type.application

group_windows := {group: [window_of(interval) | some interval in intervals] |
	some group, intervals in data.veil.privacy_groups
}

window_of(interval) := [interval.start_ns, interval.end_ns] if interval.end_ns != null

else := [interval.start_ns, forever]

# ---- Groups: the two built-in groups -----------------------------------------

# `application`: every row whose actor type is application.
built_in_windows(_, "application") := object.get(group_windows, "application", [])

# `external`: every user whose domain is not a managed domain (nor a subdomain of one).
built_in_windows(actor, "user") := object.get(group_windows, "external", []) if not is_managed(actor)

built_in_windows(actor, "user") := [] if is_managed(actor)

# A user actor without "@" has no domain: it is external.
is_managed(actor) if {
	contains(actor, "@")
	strings.any_suffix_match(actor, managed_suffixes)
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
