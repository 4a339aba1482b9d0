"""The Replicate predictions dialect, mounted at ``/replicate`` (see docs/replicate.md)."""
