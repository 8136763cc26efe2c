/* log: one line per event, "TIME LEVEL MODULE: message key=value ...", to stderr. */
#ifndef RINGFLY_CORE_LOG_H
#define RINGFLY_CORE_LOG_H

#include <stdbool.h>

enum log_level {
	LOG_LEVEL_DEBUG = 0,
	LOG_LEVEL_INFO = 1,
	LOG_LEVEL_WARN = 2,
	LOG_LEVEL_ERROR = 3,
};

/* Lines below `level` are dropped. Default: LOG_LEVEL_INFO. */
void log_set_level(enum log_level level);
enum log_level log_get_level(void);

/* Parses "debug", "info", "warn", "error". Returns 0 or -EINVAL. */
int log_level_parse(const char *name, enum log_level *out);
const char *log_level_name(enum log_level level);

/*
 * Writes one line: "2026-11-25T19:56:22.123Z info uds: removed stale socket path=/x".
 * `fmt` is printf-style and carries the message and its key=value fields.
 * The whole line goes out in one write(2), so lines from several processes
 * sharing a stderr do not interleave.
 */
void log_write(enum log_level level, const char *module, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#define log_debug(module, ...) log_write(LOG_LEVEL_DEBUG, module, __VA_ARGS__)
#define log_info(module, ...) log_write(LOG_LEVEL_INFO, module, __VA_ARGS__)
#define log_warn(module, ...) log_write(LOG_LEVEL_WARN, module, __VA_ARGS__)
#define log_error(module, ...) log_write(LOG_LEVEL_ERROR, module, __VA_ARGS__)

#endif
