/* uring-compat: io_uring constants newer than Debian's liburing 2.3, by value. */
#ifndef RINGFLY_CORE_URING_COMPAT_H
#define RINGFLY_CORE_URING_COMPAT_H

/*
 * liburing 2.3 (Debian 12) ships kernel headers older than the kernels we run
 * on. Constants it lacks are defined here by value; the kernel ABI never
 * changes them. Whether the running kernel supports them is probed at run
 * time (io_uring_get_probe, or trying a setup flag and falling back).
 * Only core/loop.c includes this file.
 */

#include <liburing.h>

#ifndef IORING_SETUP_SINGLE_ISSUER
#define IORING_SETUP_SINGLE_ISSUER (1U << 12)
#endif
#ifndef IORING_SETUP_DEFER_TASKRUN
#define IORING_SETUP_DEFER_TASKRUN (1U << 13)
#endif
#ifndef IORING_SEND_ZC_REPORT_USAGE
#define IORING_SEND_ZC_REPORT_USAGE (1U << 3)
#endif
#ifndef IORING_NOTIF_USAGE_ZC_COPIED
#define IORING_NOTIF_USAGE_ZC_COPIED (1U << 31)
#endif
#ifndef IORING_RECVSEND_BUNDLE
#define IORING_RECVSEND_BUNDLE (1U << 4)
#endif

_Static_assert(IORING_SETUP_SINGLE_ISSUER == (1U << 12), "kernel ABI");
_Static_assert(IORING_SETUP_DEFER_TASKRUN == (1U << 13), "kernel ABI");
_Static_assert(IORING_CQE_F_BUFFER == (1U << 0), "kernel ABI");
_Static_assert(IORING_CQE_F_MORE == (1U << 1), "kernel ABI");
_Static_assert(IORING_CQE_BUFFER_SHIFT == 16, "kernel ABI");
_Static_assert(IORING_ASYNC_CANCEL_FD == (1U << 1), "kernel ABI");
_Static_assert(IORING_ASYNC_CANCEL_ALL == (1U << 0), "kernel ABI");

#endif
