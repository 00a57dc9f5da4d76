"""The operator: watches the cluster (kopf), compiles, and makes the cluster say so."""
