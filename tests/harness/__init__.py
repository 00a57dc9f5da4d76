"""Test-only stand-ins for what this machine lacks (no kubelet, no container engine)."""
