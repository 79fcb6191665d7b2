# What R1 (private_windows.rego) and the built-in groups (built_in_groups.rego) share: each
# privacy group's intervals as windows, and the answer's distinct actors (docs/rules.md,
# "Privacy group", R1). Files of this package refer to each other in one direction only
# (this file, the built-in groups, R1, the decision), so that OPA, which compiles each file
# it is given with the ones it holds, can take them one by one.
package veil.privacy

import rego.v1

# ---- Windows: a privacy interval as [from_ns, to_ns) -------------------------

group_windows := {group: [window_of(interval) | some interval in intervals] |
	some group, intervals in data.veil.privacy_groups
}

# An open privacy interval ends at the largest int64.
forever := 9223372036854775807

window_of(interval) := [interval.start_ns, interval.end_ns] if interval.end_ns != null

else := [interval.start_ns, forever]

# ---- The answer's actors ---------------------------------------------------

# The answer's distinct actors by actor type. The rules of R1 and of the built-in groups work
# per group and per distinct actor, never per row.
actors_of_type := {kind: actors |
	some kind in {"user", "application"}
	actors := {actor |
		some actor in {row.actor | some row in input.rows; row.actor_type == kind}
		is_string(actor)
	}
}

answer_actors := actors_of_type.user | actors_of_type.application
