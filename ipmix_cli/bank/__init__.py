"""The fractal bank on disk: what ``ipmix fractals generate`` writes and what reads it back.

``format`` holds the names, the manifest (every image's IFS record) and the readers; ``png``
the fast encoder for bank images. The job that renders a bank is ``ipmix_cli.jobs.bank_job``.
"""
