/* bench-clock: the wall and CPU clocks the benchmark programs report in seconds. */
#ifndef RINGFLY_BENCH_CLOCK_H
#define RINGFLY_BENCH_CLOCK_H

#include <sys/time.h>
#include <time.h>

/* CLOCK_MONOTONIC in seconds. */
static inline double bench_now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A struct timeval (getrusage's ru_utime/ru_stime) in seconds. */
static inline double bench_tv_s(struct timeval tv)
{
	return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

#endif
