# The OPA gate for SecretBindings. The operator queries data.cloudtaser.binding.deny with a
# SecretBinding as input; every message denies the binding (its PolicyAllowed condition turns
# False with the messages). Platform teams extend this package or add data:
#   data.cloudtaser.config.allowed_vault_addresses: address prefixes bindings may use.
package cloudtaser.binding

# Environment variables through which a delivered value would change how a program starts.
loader_env := {
	"LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "PATH", "PYTHONPATH", "PYTHONSTARTUP",
	"NODE_OPTIONS", "JAVA_TOOL_OPTIONS", "BASH_ENV", "ENV", "PERL5OPT", "RUBYOPT",
}

deny contains msg if {
	some i, j
	key := input.spec.secrets[i].keys[j]
	key.env in loader_env
	msg := sprintf("spec.secrets[%d].keys[%d].env: %s changes how programs start; deliver the value under another name", [i, j, key.env])
}

deny contains msg if {
	some i, j
	key := input.spec.secrets[i].keys[j]
	startswith(key.file, "/etc/ld.so")
	msg := sprintf("spec.secrets[%d].keys[%d].file: %s would steer the dynamic loader", [i, j, key.file])
}

deny contains msg if {
	prefixes := data.cloudtaser.config.allowed_vault_addresses
	address := input.spec.vault.address
	not startswith_any(address, prefixes)
	msg := sprintf("spec.vault.address: %s is not among the allowed OpenBao/Vault addresses", [address])
}

startswith_any(value, prefixes) if {
	some prefix in prefixes
	startswith(value, prefix)
}

allow if count(deny) == 0
