"""Object storage: outputs written to and read from S3-compatible buckets.

An output's layout fits object storage as it is: each shard is one self-contained object,
written once and never modified, and the entry file is one small object that goes up last.
One module per job:

* ``url``: what an ``s3://bucket/key`` names, and telling it from a local path;
* ``store``: one bucket through fsspec/s3fs, with bounded retries and one-line errors;
* ``cache``: the local cache a reader fetches whole shards into, verified and size-limited.

s3fs is an optional dependency (``pip install 'ipmix[s3]'``): nothing here imports it until an
``s3://`` path is used.
"""
