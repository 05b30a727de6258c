"""The benchmarks' CPU accounting: processes that exit mid-measurement must not make the
total negative (the prepare table printed -17.15 CPU s for one row before this)."""

import subprocess
import sys

from benchmarks.common import TreeUsage, cpu_used


def test_cpu_used_counts_each_process_from_its_start_and_keeps_exited_ones():
    start = {(10, 1.0): 4.0, (11, 1.0): 2.0}
    # 10 used 1.5 s more; 11 exited after its last sample at 2.5; 12 started and used 0.7;
    # a pid reused by a new process (new create time) counts from 0.
    last = {(10, 1.0): 5.5, (11, 1.0): 2.5, (12, 3.0): 0.7, (11, 9.0): 0.2}
    assert cpu_used(start, last) == 1.5 + 0.5 + 0.7 + 0.2
    # Exited before any sample after the start: it adds nothing, never subtracts.
    assert cpu_used(start, {(10, 1.0): 4.0}) == 0.0


def test_tree_usage_counts_a_child_that_burns_cpu_and_exits():
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 1.0: pass\n"
    with TreeUsage(interval=0.05) as use:
        subprocess.run([sys.executable, "-c", burn], check=True)
    assert use.cpu_seconds >= 0.5  # the child's ~1 s, seen by the samples while it ran
    with TreeUsage(interval=0.05) as idle:
        pass
    assert 0.0 <= idle.cpu_seconds < 0.5
