"""ORCHESTRATION: the only layer that sees the inputs, the recipe and the output format.

``augment_job`` (with ``augment_spec`` and the worker side, ``augment_tasks``) runs
``ipmix augment``; ``bank_job`` runs ``ipmix fractals generate``; ``parallel`` chooses the
backend (threads, loky processes, dask) in one place, and ``distributed`` is the dask part.
Jobs report progress through callbacks and return summaries; printing is the commands' job.
"""
