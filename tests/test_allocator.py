"""The allocator tuning: image-sized buffers stop costing fresh pages once it is on."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import resource, sys
import numpy as np
if sys.argv[1] == "tuned":
    from ipmix_cli.augment.allocator import keep_image_buffers_on_heap
    assert keep_image_buffers_on_heap()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(300):
    # a few 150 KB images alive at once, then all freed, as in one sample's chain of ops:
    # without tuning glibc trims the freed top of the heap and faults it in again
    images = [np.ones((224, 224, 3), np.uint8) for _ in range(4)]
    del images
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True
    )
    return int(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_image_buffers_reuse_heap_pages() -> None:
    plain, tuned = faults("plain"), faults("tuned")
    # Tuned, the blocks are reused, so almost no new page is touched after the first round.
    assert tuned < 1_000, tuned
    assert plain > 5 * tuned, (plain, tuned)
