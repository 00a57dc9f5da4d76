"""The admission webhook (`/mutate-v1-pod`): applies the engine's pod patches at admission."""
