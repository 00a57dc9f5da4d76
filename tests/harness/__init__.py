"""The test harness: every fixture and helper more than one suite (or a benchmark) needs.

Modules that define fixtures are pytest plugins, loaded by tests/conftest.py; test modules,
conftests and benchmarks import from here and never from each other (tests/test_layout.py).
"""
