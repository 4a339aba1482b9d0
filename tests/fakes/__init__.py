"""One-file fake engines, each named after the failure it simulates."""
