# METADATA
# title: Veil activity privacy
# description: |
#   Decides, for one upstream answer at a time, which activity rows are private and whether
#   the caller may see them through a reveal session. One file per rule of docs/rules.md:
#     decision.rego         the entry point Veil asks (this file)
#     private_windows.rego  R1, forward only: the actor was in a private group at the row's time
#     unreadable_rows.rego  R2, fail closed: a row without actor or time is private
#     built_in_groups.rego  the built-in groups `application` and `external`
#     reveal.rego           R4, reveal only through a live session of a permitted admin
#   The state admins manage lives in data.veil (see policies/README.md).
package veil.privacy

import rego.v1

# METADATA
# title: The decision Veil asks for, once per upstream answer
# description: |
#   private_rows is the set of indexes of the private rows: R1 and R2 here, and every
#   `private_rows contains i if ...` rule a policy author adds to the package.
# entrypoint: true
decision := {
	"private_rows": private_rows,
	"reveal": reveal_allowed,
	"refusals": refusals,
}
