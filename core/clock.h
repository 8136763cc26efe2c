/* clock: monotonic and wall time in the units the rest of the code names. */
#ifndef RINGFLY_CORE_CLOCK_H
#define RINGFLY_CORE_CLOCK_H

#include <stdint.h>

/* CLOCK_MONOTONIC in nanoseconds / milliseconds. */
uint64_t clock_monotonic_ns(void);
uint64_t clock_monotonic_ms(void);

/* CLOCK_REALTIME in milliseconds since the epoch. */
uint64_t clock_realtime_ms(void);

#endif
