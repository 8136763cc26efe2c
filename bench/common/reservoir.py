#!/usr/bin/env python3
"""reservoir.py FILE: keeps a benchmark's new page cache warm for the whole run.

FILE (written just before, the prewarm) is shrunk, checked every 20 ms, in
64 MiB steps, by as much as the run has grown since the start: the larger of
what the machine's free memory dropped and what FILE's filesystem filled (the
run's data on the same tmpfs: free memory alone misses it once the kernel
reclaims other page cache to make room); and further while free memory or the
filesystem's free space is under 512 MiB. The pages the run allocates are the
ones freed a moment earlier, still backed by the host, and the run never meets
a full tmpfs or a memory shortage on the reservoir's account. Removing FILE
and keeping the memory free instead (a plain prewarm) stays warm only for a
second or two on this VM: free memory is handed back to the host soon after,
and touching it again costs about 2 CPU-s/GiB instead of 0.4 (bench/README.md
"Memory").

Prints "ready" once it watches; exits when FILE is removed or its parent (the
benchmark's shell) is gone, or when killed (prewarm_end), not when FILE is
empty: a child the shell reaps during a timed command adds its CPU (freeing the
reservoir) to that command's in bash's `time`.
"""
import os
import sys
import time

STEP = 64 << 20
FLOOR = 512 << 20


def mem_free():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemFree:"):
                return int(line.split()[1]) << 10
    raise SystemExit("reservoir.py: no MemFree in /proc/meminfo")


def fs_free(fd):
    st = os.fstatvfs(fd)
    return st.f_bavail * st.f_frsize


def main():
    path = sys.argv[1]
    fd = os.open(path, os.O_WRONLY)
    initial = size = os.fstat(fd).st_size
    parent = os.getppid()
    base_mem = mem_free()
    base_fs = fs_free(fd)
    print("ready", flush=True)
    while os.getppid() == parent and os.fstat(fd).st_nlink > 0:
        cut = initial - size
        free_mem = mem_free()
        free_fs = fs_free(fd)
        grown = max(base_mem - free_mem, base_fs - free_fs) + cut
        want = initial - (grown + STEP - 1) // STEP * STEP if grown > 0 else size
        short = max(FLOOR - free_mem, FLOOR - free_fs)
        if short > 0:
            want = min(want, size - (short + STEP - 1) // STEP * STEP)
        if 0 < size and want < size:
            size = max(0, want)
            os.ftruncate(fd, size)
        time.sleep(0.02 if size else 0.2)


if __name__ == "__main__":
    main()
