# `opa test policies/` runs these (the e2e suite does, against the built OPA).
package cloudtaser.binding_test

import data.cloudtaser.binding

ok := {"spec": {"vault": {"address": "https://bao.example:8200"}, "secrets": [{"keys": [{"key": "k", "env": "DB_PASSWORD"}]}]}}

test_plain_binding_is_allowed if {
	binding.allow with input as ok
}

test_loader_env_is_denied if {
	bad := json.patch(ok, [{"op": "replace", "path": "/spec/secrets/0/keys/0/env", "value": "LD_PRELOAD"}])
	binding.deny == {"spec.secrets[0].keys[0].env: LD_PRELOAD changes how programs start; deliver the value under another name"} with input as bad
}

test_loader_config_file_is_denied if {
	bad := json.patch(ok, [{"op": "add", "path": "/spec/secrets/0/keys/0/file", "value": "/etc/ld.so.preload"}])
	not binding.allow with input as bad
}

test_address_allow_list if {
	binding.allow with input as ok with data.cloudtaser.config.allowed_vault_addresses as ["https://bao.example"]
	not binding.allow with input as ok with data.cloudtaser.config.allowed_vault_addresses as ["https://other"]
}
