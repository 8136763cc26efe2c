/* test_progress: what `ringfly get` shows: the bar on a terminal (percent,
 * bytes, rate, ETA, source), the line elsewhere, the summary after a bar. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/progress.h"

#define MIB (1ull << 20)
#define GIB (1ull << 30)

static char *buf;
static size_t len;
static FILE *out;

static void setup(void)
{
	buf = NULL;
	len = 0;
	out = open_memstream(&buf, &len);
	cr_assert_not_null(out);
}

static void teardown(void)
{
	fclose(out);
	free(buf);
}

TestSuite(progress, .init = setup, .fini = teardown);

/* A report now, whatever the redraw interval. */
static void update_now(struct progress *p, uint64_t done, uint64_t total, uint64_t rate,
		       const char *source)
{
	p->last_ms = 0;
	progress_update(p, done, total, rate, source);
	fflush(out);
}

Test(progress, a_terminal_gets_a_bar_with_percent_bytes_rate_eta_and_source)
{
	struct progress p;

	progress_init(&p, out, "/tmp/x", false);
	p.tty = true;
	update_now(&p, 256 * MIB, GIB, 100000000, "origin");
	cr_assert_str_eq(buf, "\r\033[K[######..................]  25%  256.0 MiB / 1.0 GiB  "
			      "100.0 MB/s  ETA 0:08  origin");
	/* Done: no ETA; the rate in GB/s. */
	update_now(&p, GIB, GIB, 2500000000ull, "peers");
	cr_assert(strstr(buf, "[########################] 100%  1.0 GiB / 1.0 GiB  2.50 GB/s  peers"),
		  "%s", buf);
	cr_assert_null(strstr(buf + strlen(buf) - 40, "ETA"), "%s", buf);
	/* The summary clears the bar first. */
	progress_summary(&p, GIB, "peers", "abc");
	fflush(out);
	cr_assert(strstr(buf, "peers\r\033[Kringfly: /tmp/x: 1073741824 bytes in "), "%s", buf);
	cr_assert(strstr(buf, ") from peers, task abc\n"), "%s", buf);
}

Test(progress, an_eta_past_a_minute_and_a_slow_rate)
{
	struct progress p;

	progress_init(&p, out, "f", false);
	p.tty = true;
	update_now(&p, 0, 100 * MIB, 500000, "origin");
	cr_assert(strstr(buf, "  0%  0 B / 100.0 MiB  500.0 kB/s  ETA 3:29  origin"), "%s", buf);
}

Test(progress, elsewhere_a_line_and_no_escapes)
{
	struct progress p;

	progress_init(&p, out, "/tmp/y", false);
	p.tty = false;
	update_now(&p, 3 * MIB, 12 * MIB, 1500000, "cache");
	cr_assert_str_eq(buf, "ringfly: /tmp/y: 3.0 MiB of 12.0 MiB (25%) 1.5 MB/s from cache\n");
	progress_summary(&p, 12 * MIB, "cache", "t");
	fflush(out);
	cr_assert_null(strchr(buf, '\033'), "%s", buf);
}

Test(progress, quiet_shows_only_the_summary)
{
	struct progress p;

	progress_init(&p, out, "q", true);
	update_now(&p, 1, 2, 1, "origin");
	cr_assert_eq(len, 0, "%s", buf);
	progress_summary(&p, 2, "origin", "t");
	fflush(out);
	cr_assert(strncmp(buf, "ringfly: q: 2 bytes in ", 23) == 0, "%s", buf);
}

Test(progress, byte_and_rate_units)
{
	char text[16];

	progress_format_bytes(1023, text);
	cr_assert_str_eq(text, "1023 B");
	progress_format_bytes(1536, text);
	cr_assert_str_eq(text, "1.5 KiB");
	progress_format_bytes(5ull << 40, text);
	cr_assert_str_eq(text, "5.0 TiB");
	progress_format_bytes(5ull << 50, text);
	cr_assert_str_eq(text, "5120.0 TiB");
	progress_format_rate(999, text);
	cr_assert_str_eq(text, "1.0 kB/s");
	progress_format_rate(1000000000ull, text);
	cr_assert_str_eq(text, "1.00 GB/s");
}
