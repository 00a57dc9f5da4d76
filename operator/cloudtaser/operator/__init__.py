"""The operator: watches the cluster (kopf), compiles, and makes the cluster say so.

running.py      what ``cloudtaser operator`` runs: kopf's handlers, the process
reconciling.py  the Operator: what it knows of the cluster, and the reconcile loop
listing.py      reads: the initial lists, the agents' node reports, image pull secrets
opa.py          questions to OPA about each SecretBinding
statuses.py     pure: each CR's status, a binding's Event lines, node reports added up
writing.py      writes: status patches, Events, the MutatingWebhookConfiguration
election.py     leader election among the replicas
"""
