/* progress: the CLI's download progress on stderr: a bar on a terminal, a line every few
 * seconds otherwise, and the summary. */
#ifndef RINGFLY_CMD_PROGRESS_H
#define RINGFLY_CMD_PROGRESS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

struct progress {
	FILE *out;
	const char *name;	/* what is being written, e.g. the output path */
	bool tty;		/* redraw one line in place */
	bool quiet;		/* no progress, only the summary */
	uint64_t started_ms;
	uint64_t last_ms;	/* last time something was printed */
	bool drawn;		/* a bar is on screen (to be cleared) */
};

void progress_init(struct progress *p, FILE *out, const char *name, bool quiet);
/* A progress report: bytes done of total (0 unknown), the daemon's rate
 * estimate and the source ("origin", "cache", "peer"). Rate-limited. */
void progress_update(struct progress *p, uint64_t done, uint64_t total, uint64_t rate_bytes_per_s,
		     const char *source);
/* Clears the bar (before an error line or the summary). */
void progress_clear(struct progress *p);
/* "ringfly: NAME: N bytes in T s (R) from SOURCE, task ID". */
void progress_summary(struct progress *p, uint64_t bytes, const char *source, const char *task);

/* "1.5 GiB" etc. into out[16]. */
void progress_format_bytes(uint64_t bytes, char out[16]);
/* "1.10 GB/s" etc. into out[16]. */
void progress_format_rate(uint64_t bytes_per_s, char out[16]);

#endif
