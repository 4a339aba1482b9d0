"""Fake generation backends, one per failure they simulate, for fast worker tests.

Each implements :class:`pixelmill.core.backend.GenerationBackend` and makes real small
PNG results through the ordinary result types (see :mod:`.base`):

* :mod:`.crash_mid_job`: raises an unexpected exception a few steps in;
* :mod:`.oom_first_attempt`: runs out of memory on its first batch, then works;
* :mod:`.oom_above_size`: runs out of memory on calls of more than N images;
* :mod:`.slow_cancel_aware`: slow steps that stop at the cancel token;
* :mod:`.nan_output`: returns the black images NaN output turns into;
* :mod:`.load_failure`: its model fails to load.
* :mod:`.records_requests`: works, and keeps every request it ran (input images too).
"""
