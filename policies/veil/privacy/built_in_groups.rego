# The two built-in groups of docs/rules.md ("Group"): `application`, every row whose actor
# type is application, and `external`, every user outside the managed domains. They are
# never imported: when one is private, its windows apply to the answer's actors it holds.
package veil.privacy

import rego.v1

# ---- Groups: the two built-in groups -----------------------------------------

built_in_groups := {"application", "external"}

# {actor_type: {actor: windows}} of the private built-in groups, for the answer's actors.
built_in_windows := {
	"application": {actor: windows |
		windows := group_windows.application
		some actor in actors_of_type.application
	},
	"user": {actor: windows |
		windows := group_windows.external
		some actor in external_users
	},
}

# `external`: every user whose domain is not a managed domain (nor a subdomain of one). A user
# actor without "@" has no domain: it is external.
external_users := actors_of_type.user - managed_users

managed_users := {actor |
	some actor in actors_of_type.user
	contains(actor, "@")
	strings.any_suffix_match(actor, managed_suffixes)
}

managed_suffixes := {concat("", [separator, domain]) |
	some domain in data.veil.managed_domains
	some separator in {"@", "."}
}
