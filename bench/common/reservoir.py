#!/usr/bin/env python3
"""reservoir.py FILE: keeps a benchmark's new page cache warm for the whole run.

FILE (written just before, the prewarm) is shrunk by as much as the machine's
free memory drops below its level at the start, checked every 20 ms, in 64 MiB
steps, until it is empty: the pages the run allocates are the ones freed a
moment earlier, still backed by the host. Removing FILE and keeping the memory
free instead (a plain prewarm) stays warm only for a second or two on this VM:
free memory is handed back to the host soon after, and touching it again costs
about 2 CPU-s/GiB instead of 0.4 (bench/README.md "Memory").

Prints "ready" once it watches; exits when FILE is empty, removed, or its
parent (the benchmark's shell) is gone.
"""
import os
import sys
import time

STEP = 64 << 20


def mem_free():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemFree:"):
                return int(line.split()[1]) << 10
    raise SystemExit("reservoir.py: no MemFree in /proc/meminfo")


def main():
    path = sys.argv[1]
    fd = os.open(path, os.O_WRONLY)
    size = os.fstat(fd).st_size
    parent = os.getppid()
    base = mem_free()
    print("ready", flush=True)
    while size > 0 and os.getppid() == parent and os.fstat(fd).st_nlink > 0:
        deficit = base - mem_free()
        if deficit > 0:
            cut = min(size, (deficit + STEP - 1) // STEP * STEP)
            size -= cut
            os.ftruncate(fd, size)
        time.sleep(0.02)


if __name__ == "__main__":
    main()
