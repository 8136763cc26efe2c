/* progress: the CLI's download progress on stderr: a bar on a terminal, a line every few
 * seconds otherwise, and the summary. */
#include "cmd/progress.h"

#include <string.h>
#include <unistd.h>

#include "core/clock.h"

#define PROGRESS_TTY_MS 200u	/* redraw interval on a terminal */
#define PROGRESS_LINE_MS 2000u	/* one line this often otherwise */
#define PROGRESS_BAR_WIDTH 24

void progress_init(struct progress *p, FILE *out, const char *name, bool quiet)
{
	memset(p, 0, sizeof(*p));
	p->out = out;
	p->name = name;
	p->quiet = quiet;
	p->tty = isatty(fileno(out));
	p->started_ms = p->last_ms = clock_monotonic_ms();
}

void progress_format_bytes(uint64_t bytes, char out[16])
{
	static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB" };
	double value = (double)bytes;
	unsigned unit = 0;

	while (value >= 1024.0 && unit + 1 < sizeof(units) / sizeof(units[0])) {
		value /= 1024.0;
		unit++;
	}
	if (unit == 0)
		snprintf(out, 16, "%llu B", (unsigned long long)bytes);
	else
		snprintf(out, 16, "%.1f %s", value, units[unit]);
}

void progress_format_rate(uint64_t bytes_per_s, char out[16])
{
	if (bytes_per_s >= 1000000000ull)
		snprintf(out, 16, "%.2f GB/s", (double)bytes_per_s / 1e9);
	else if (bytes_per_s >= 1000000ull)
		snprintf(out, 16, "%.1f MB/s", (double)bytes_per_s / 1e6);
	else
		snprintf(out, 16, "%.1f kB/s", (double)bytes_per_s / 1e3);
}

void progress_update(struct progress *p, uint64_t done, uint64_t total, uint64_t rate_bytes_per_s,
		     const char *source)
{
	uint64_t now_ms = clock_monotonic_ms();
	char done_text[16], total_text[16], rate_text[16];
	unsigned percent = total ? (unsigned)(done * 100u / total) : 0;

	if (p->quiet || now_ms - p->last_ms < (p->tty ? PROGRESS_TTY_MS : PROGRESS_LINE_MS))
		return;
	p->last_ms = now_ms;
	progress_format_bytes(done, done_text);
	progress_format_bytes(total, total_text);
	progress_format_rate(rate_bytes_per_s, rate_text);
	if (p->tty) {
		char bar[PROGRESS_BAR_WIDTH + 1], eta[32] = "";
		int filled = total ? (int)(done * PROGRESS_BAR_WIDTH / total) : 0;

		for (int i = 0; i < PROGRESS_BAR_WIDTH; i++)
			bar[i] = i < filled ? '#' : '.';
		bar[PROGRESS_BAR_WIDTH] = '\0';
		if (total && rate_bytes_per_s && done < total) {
			uint64_t eta_s = (total - done) / rate_bytes_per_s;

			snprintf(eta, sizeof(eta), "  ETA %llu:%02llu", (unsigned long long)(eta_s / 60),
				 (unsigned long long)(eta_s % 60));
		}
		fprintf(p->out, "\r\033[K[%s] %3u%%  %s / %s  %s%s  %s", bar, percent, done_text,
			total_text, rate_text, eta, source);
		p->drawn = true;
	} else {
		fprintf(p->out, "ringfly: %s: %s of %s (%u%%) %s from %s\n", p->name, done_text,
			total_text, percent, rate_text, source);
	}
	fflush(p->out);
}

void progress_clear(struct progress *p)
{
	if (p->drawn) {
		fputs("\r\033[K", p->out);
		fflush(p->out);
		p->drawn = false;
	}
}

void progress_summary(struct progress *p, uint64_t bytes, const char *source, const char *task)
{
	uint64_t elapsed_ms = clock_monotonic_ms() - p->started_ms;
	char rate_text[16];

	progress_clear(p);
	progress_format_rate(elapsed_ms ? bytes * 1000u / elapsed_ms : 0, rate_text);
	fprintf(p->out, "ringfly: %s: %llu bytes in %.2f s (%s) from %s, task %s\n", p->name,
		(unsigned long long)bytes, (double)elapsed_ms / 1000.0, rate_text, source, task);
	fflush(p->out);
}
