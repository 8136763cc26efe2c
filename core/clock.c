/* clock: monotonic and wall time in the units the rest of the code names. */
#include "core/clock.h"

#include <assert.h>
#include <time.h>

static uint64_t clock_read_ns(clockid_t id)
{
	struct timespec ts;
	int rc = clock_gettime(id, &ts);

	assert(rc == 0);
	(void)rc;
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t clock_monotonic_ns(void)
{
	return clock_read_ns(CLOCK_MONOTONIC);
}

uint64_t clock_monotonic_ms(void)
{
	return clock_read_ns(CLOCK_MONOTONIC) / 1000000ull;
}

uint64_t clock_realtime_ms(void)
{
	return clock_read_ns(CLOCK_REALTIME) / 1000000ull;
}
