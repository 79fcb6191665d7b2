# An optional rule, not loaded by default: copy this file and file_downloads_test.rego into
# the policy directory (policies/veil/privacy/) to make every FileDownloaded activity private.
# See policies/README.md, "Worked example".
package veil.privacy

import rego.v1

# METADATA
# title: Every FileDownloaded activity is private
private_rows contains i if {
	some i, row in input.rows
	row.raw.activity == "FileDownloaded"
}
