package veil.privacy_test

import rego.v1

import data.veil.privacy

download_query(rows) := {
	"caller": "bob@contoso.com",
	"request": {},
	"reveal_session_id": null,
	"session": null,
	"now_ns": 1704067200000000000,
	"rows": rows,
}

download_row(i, activity) := {
	"index": i,
	"id": sprintf("a%d", [i]),
	"actor": "carl@contoso.com",
	"actor_type": "user",
	"ts_ns": 1704067200000000000,
	"raw": {"id": sprintf("a%d", [i]), "user": "carl@contoso.com", "activity": activity},
}

test_file_download_is_private if {
	result := privacy.decision with input as download_query([
		download_row(0, "FileDownloaded"),
		download_row(1, "FileAccessed"),
	])
		with data.veil.privacy_groups as {}
	result.private_rows == {0}
}

test_other_activities_of_the_same_user_stay_visible if {
	result := privacy.decision with input as download_query([download_row(0, "FileAccessed")])
		with data.veil.privacy_groups as {}
	result.private_rows == set()
}
