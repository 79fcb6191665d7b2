# R1 — forward only (docs/rules.md): a row is private iff its actor belonged to a group that
# was private at the row's time. A group private in several intervals has several windows; a
# member who left a group stays private in it up to the moment they left.
package veil.privacy

import rego.v1

# ---- R1: private iff the actor was in a private group at the row's time ------

private_rows contains i if some i in rows_in_private_window

rows_in_private_window contains i if {
	some i, row in input.rows
	some window in windows_of_answer_actor[[row.actor_type, row.actor]]
	row.ts_ns >= window[0]
	row.ts_ns < window[1]
}

# {[actor_type, actor]: windows}: actor_windows flattened once per answer, so each row costs
# one lookup.
windows_of_answer_actor := {[kind, actor]: windows |
	some kind, windows_by_actor in actor_windows
	some actor, windows in windows_by_actor
}

# METADATA
# title: The private windows of each actor of the answer, by actor type
# description: |
#   {actor_type: {actor: [[from_ns, to_ns], ...]}}: a row of that actor and type is private
#   when its time is in one of the windows; only actors with a window appear. It reads only
#   the rows' actor and actor_type and data.veil, so Veil computes it once per actor for
#   each policy and state version, caches it, and applies it to every row itself (see
#   policies/README.md, "The fast path").
# entrypoint: true
actor_windows := {kind: windows_by_actor |
	some kind, actors in actors_of_type
	built_in := built_in_windows[kind]
	with_windows := actors_with_member_windows | {member | some member, _ in built_in}
	windows_by_actor := {actor: windows |
		some actor in actors & with_windows
		windows := array.concat(object.get(member_windows, actor, []), object.get(built_in, actor, []))
		count(windows) > 0
	}
}

# Windows of the imported private groups each actor is in, and of those they left, cut at the
# moment they left. Only actors with such a window appear.
member_windows := {actor: windows |
	some actor in actors_with_member_windows
	windows := array.concat(
		[window |
			some group, present in members_by_group
			actor in present
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

actors_with_member_windows := members_present | former_members_present

# {group: the answer's actors who are members} for each imported private group.
members_by_group := {group: present |
	some group, _ in data.veil.privacy_groups
	not group in built_in_groups
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
