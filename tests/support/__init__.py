"""Helpers shared by the test suites: a real server process, image utilities."""
