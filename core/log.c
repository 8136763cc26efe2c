/* log: one line per event, "TIME LEVEL MODULE: message key=value ...", to stderr. */
#include "core/log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/clock.h"

static enum log_level log_level_min = LOG_LEVEL_INFO;

static const char *const log_level_names[] = {
	[LOG_LEVEL_DEBUG] = "debug",
	[LOG_LEVEL_INFO] = "info",
	[LOG_LEVEL_WARN] = "warn",
	[LOG_LEVEL_ERROR] = "error",
};

void log_set_level(enum log_level level)
{
	log_level_min = level;
}

enum log_level log_get_level(void)
{
	return log_level_min;
}

const char *log_level_name(enum log_level level)
{
	if ((unsigned)level > LOG_LEVEL_ERROR)
		return "?";
	return log_level_names[level];
}

int log_level_parse(const char *name, enum log_level *out)
{
	for (unsigned i = 0; i <= LOG_LEVEL_ERROR; i++) {
		if (strcmp(name, log_level_names[i]) == 0) {
			*out = (enum log_level)i;
			return 0;
		}
	}
	return -EINVAL;
}

void log_write(enum log_level level, const char *module, const char *fmt, ...)
{
	char line[2048];
	size_t used;
	int n;

	if (level < log_level_min)
		return;

	int saved_errno = errno;
	uint64_t now_ms = clock_realtime_ms();
	time_t secs = (time_t)(now_ms / 1000);
	struct tm tm;

	gmtime_r(&secs, &tm);
	used = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
	n = snprintf(line + used, sizeof(line) - used, ".%03uZ %s %s: ",
		     (unsigned)(now_ms % 1000), log_level_name(level), module);
	if (n > 0)
		used += (size_t)n;

	va_list ap;
	va_start(ap, fmt);
	n = vsnprintf(line + used, sizeof(line) - used, fmt, ap);
	va_end(ap);
	if (n > 0)
		used += (size_t)n;
	if (used > sizeof(line) - 2)
		used = sizeof(line) - 2; /* truncated: keep the newline */
	line[used++] = '\n';

	/* One write: concurrent writers to one stderr do not interleave lines. */
	ssize_t w = write(STDERR_FILENO, line, used);
	(void)w;
	errno = saved_errno;
}
