/* config: reads a YAML file (libyaml events) into a caller's struct through an option table. */
#include "core/config.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <yaml.h>

/* Largest config accepted, file or buffer. */
#define CONFIG_MAX_BYTES (1 << 20)

/* How much of a value or key an error message quotes. */
#define CONFIG_QUOTE_VALUE 64
#define CONFIG_QUOTE_KEY   128

/* Room for the reason of a value error ("expects ..., got '...'"). */
#define CONFIG_REASON_MAX 512

/* A parsed value, before it is stored. `str` is borrowed from the input. */
struct config_value {
	int64_t num;	 /* INT/BYTES/DURATION/MODE/BOOL; CHOICE: index in choices */
	const char *str; /* STRING */
	size_t len;	 /* STRING */
};

/* A value read from the document, applied to the target once all of it is valid. */
struct config_staged {
	bool set;
	size_t line;
	int64_t num;
	char *str; /* STRING: owned copy */
};

/* A nested mapping already read: the first `len` bytes of options[opt].key. */
struct config_section {
	size_t opt;
	size_t len;
	size_t line;
};

struct config_ctx {
	const char *name;
	const char *text;
	size_t text_len;
	const struct config_option *options;
	size_t count;
	yaml_parser_t parser;
	char *path; /* dotted key being read, NUL-terminated */
	size_t path_len, path_cap;
	struct config_staged *staged; /* `count` entries */
	struct config_section *sections;
	size_t nsections, sections_cap;
	char *err;
	size_t err_size;
};

struct config_suffix {
	const char *name;
	int64_t mult;
};

static const struct config_suffix config_bytes_suffixes[] = {
	{ "", 1 },
	{ "B", 1 },
	{ "K", INT64_C(1) << 10 },
	{ "k", INT64_C(1) << 10 },
	{ "KiB", INT64_C(1) << 10 },
	{ "M", INT64_C(1) << 20 },
	{ "MiB", INT64_C(1) << 20 },
	{ "G", INT64_C(1) << 30 },
	{ "GiB", INT64_C(1) << 30 },
	{ NULL, 0 },
};

static const struct config_suffix config_duration_suffixes[] = {
	{ "", 1 },
	{ "ms", 1 },
	{ "s", 1000 },
	{ "m", 60 * 1000 },
	{ "h", 60 * 60 * 1000 },
	{ NULL, 0 },
};

static const struct config_suffix config_seconds_suffixes[] = {
	{ "", 1000 },
	{ "ms", 1 },
	{ "s", 1000 },
	{ "m", 60 * 1000 },
	{ "h", 60 * 60 * 1000 },
	{ NULL, 0 },
};

static bool config_is_number(enum config_type type)
{
	return type == CONFIG_INT || type == CONFIG_BYTES || type == CONFIG_DURATION ||
	       type == CONFIG_SECONDS;
}

static void config_check_table(const struct config_option *options, size_t count)
{
	assert(options || count == 0);
	for (size_t i = 0; i < count; i++) {
		const struct config_option *opt = &options[i];

		assert(opt->key && opt->key[0]);
		assert(opt->type >= CONFIG_STRING && opt->type <= CONFIG_CHOICE);
		if (opt->type == CONFIG_STRING || opt->type == CONFIG_CHOICE)
			assert(opt->size > 0);
		if (opt->type == CONFIG_CHOICE)
			assert(opt->choices && opt->choices[0]);
		if (config_is_number(opt->type))
			assert(opt->min <= opt->max);
		for (size_t j = 0; j < i; j++)
			assert(strcmp(options[j].key, opt->key) != 0);
		(void)opt;
	}
}

/*
 * Copies as much of s[len] as fits out[out_size] for quoting in a one-line
 * message: control bytes become '?', a cut is marked "...", and a cut never
 * splits a UTF-8 sequence.
 */
static const char *config_quote(char *out, size_t out_size, const char *s, size_t len)
{
	size_t n = len, o = 0, max;
	bool cut = false;

	assert(out_size > 4);
	max = out_size - 4;
	if (n > max) {
		n = max;
		while (n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80)
			n--;
		cut = true;
	}
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		out[o++] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
	}
	if (cut) {
		memcpy(out + o, "...", 3);
		o += 3;
	}
	out[o] = '\0';
	return out;
}

/* Plain "", "~" and "null" are YAML's null (a `key:` with nothing after it). */
static bool config_scalar_is_null(const yaml_event_t *ev)
{
	const char *v = (const char *)ev->data.scalar.value;
	size_t len = ev->data.scalar.length;

	assert(ev->type == YAML_SCALAR_EVENT);
	if (ev->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
		return false;
	return len == 0 || (len == 1 && v[0] == '~') ||
	       (len == 4 &&
		(!memcmp(v, "null", 4) || !memcmp(v, "Null", 4) || !memcmp(v, "NULL", 4)));
}

/* What an option accepts, as the "expects ..." part of a message. */
static const char *config_describe(const struct config_option *opt, char *buf, size_t size)
{
	size_t used;

	switch (opt->type) {
	case CONFIG_STRING:
		return "a string";
	case CONFIG_INT:
		return "an integer";
	case CONFIG_BOOL:
		return "a boolean (true/false, yes/no, on/off)";
	case CONFIG_MODE:
		return "an octal mode such as 0660";
	case CONFIG_BYTES:
		return "a size such as 4096, 64K or 1MiB";
	case CONFIG_DURATION:
		return "a duration such as 500ms, 5s, 1m or 1h";
	case CONFIG_SECONDS:
		return "a duration such as 30 (seconds), 500ms, 5s, 1m or 1h";
	case CONFIG_CHOICE:
		used = (size_t)snprintf(buf, size, "one of");
		for (size_t i = 0; opt->choices[i] && used < size; i++)
			used += (size_t)snprintf(buf + used, size - used, "%s %s", i ? "," : "",
						 opt->choices[i]);
		return buf;
	}
	assert(!"unknown config_type");
	return "?";
}

/*
 * Reads a decimal integer with an optional sign at the start of s[len].
 * Returns 0 with *used set to the bytes read, -EINVAL when there is no digit,
 * -ERANGE when it does not fit an int64_t.
 */
static int config_parse_decimal(const char *s, size_t len, size_t *used, int64_t *out)
{
	uint64_t limit = INT64_MAX, mag = 0;
	size_t i = 0, digits = 0;
	bool neg = false;

	if (i < len && (s[i] == '+' || s[i] == '-')) {
		neg = s[i] == '-';
		i++;
	}
	if (neg)
		limit = (uint64_t)INT64_MAX + 1;
	for (; i < len && s[i] >= '0' && s[i] <= '9'; i++, digits++) {
		unsigned d = (unsigned)(s[i] - '0');

		if (mag > (limit - d) / 10)
			return -ERANGE;
		mag = mag * 10 + d;
	}
	if (digits == 0)
		return -EINVAL;
	if (neg)
		*out = mag == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)mag;
	else
		*out = (int64_t)mag;
	*used = i;
	return 0;
}

/* A decimal integer followed by one of `suffixes`, scaled by its multiplier. */
static int config_parse_scaled(const char *s, size_t len, const struct config_suffix *suffixes,
			       int64_t *out)
{
	size_t used;
	int64_t v;
	int rc;

	rc = config_parse_decimal(s, len, &used, &v);
	if (rc)
		return rc;
	for (const struct config_suffix *sfx = suffixes; sfx->name; sfx++) {
		if (strlen(sfx->name) != len - used || memcmp(sfx->name, s + used, len - used))
			continue;
		if (__builtin_mul_overflow(v, sfx->mult, out))
			return -ERANGE;
		return 0;
	}
	return -EINVAL;
}

static int config_parse_bool(const char *s, size_t len, int64_t *out)
{
	static const char *const yes[] = { "true", "yes", "on" };
	static const char *const no[] = { "false", "no", "off" };

	for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
		if (len == strlen(yes[i]) && !strncasecmp(s, yes[i], len)) {
			*out = 1;
			return 0;
		}
		if (len == strlen(no[i]) && !strncasecmp(s, no[i], len)) {
			*out = 0;
			return 0;
		}
	}
	return -EINVAL;
}

/* Octal digits only, such as 0660 or 660; -ERANGE above 07777. */
static int config_parse_mode(const char *s, size_t len, int64_t *out)
{
	int64_t v = 0;
	bool big = false;

	if (len == 0)
		return -EINVAL;
	for (size_t i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '7')
			return -EINVAL;
		v = v * 8 + (s[i] - '0');
		if (v > 07777) {
			big = true;
			v = 07777; /* keep scanning for a bad digit */
		}
	}
	if (big)
		return -ERANGE;
	*out = v;
	return 0;
}

/*
 * Parses s[len] as `opt` expects. `is_null` marks a YAML null (only a string
 * accepts it, as ""). Returns 0, or -EINVAL with the reason (without the key)
 * in reason[size].
 */
static int config_parse_value(const struct config_option *opt, const char *s, size_t len,
			      bool is_null, struct config_value *out, char *reason, size_t size)
{
	char what[CONFIG_REASON_MAX / 2], quoted[CONFIG_QUOTE_VALUE + 4];
	const char *unit = "";
	int rc = 0;

	memset(out, 0, sizeof(*out));
	if (is_null) {
		if (opt->type == CONFIG_STRING) {
			out->str = "";
			return 0;
		}
		snprintf(reason, size, "expects %s, got null",
			 config_describe(opt, what, sizeof(what)));
		return -EINVAL;
	}

	switch (opt->type) {
	case CONFIG_STRING:
		if (memchr(s, '\0', len)) {
			snprintf(reason, size, "contains a NUL byte");
			return -EINVAL;
		}
		if (len >= opt->size) {
			snprintf(reason, size, "is too long (%zu bytes, at most %zu)", len,
				 opt->size - 1);
			return -EINVAL;
		}
		out->str = s;
		out->len = len;
		return 0;
	case CONFIG_INT: {
		size_t used;

		rc = config_parse_decimal(s, len, &used, &out->num);
		if (rc == 0 && used != len)
			rc = -EINVAL;
		break;
	}
	case CONFIG_BOOL:
		rc = config_parse_bool(s, len, &out->num);
		break;
	case CONFIG_MODE:
		rc = config_parse_mode(s, len, &out->num);
		if (rc == -ERANGE) {
			snprintf(reason, size, "must be at most 07777, got '%s'",
				 config_quote(quoted, sizeof(quoted), s, len));
			return -EINVAL;
		}
		break;
	case CONFIG_BYTES:
		rc = config_parse_scaled(s, len, config_bytes_suffixes, &out->num);
		unit = " bytes";
		break;
	case CONFIG_DURATION:
		rc = config_parse_scaled(s, len, config_duration_suffixes, &out->num);
		unit = " ms";
		break;
	case CONFIG_SECONDS:
		rc = config_parse_scaled(s, len, config_seconds_suffixes, &out->num);
		unit = " ms";
		break;
	case CONFIG_CHOICE:
		rc = -EINVAL;
		for (size_t i = 0; opt->choices[i]; i++) {
			if (strlen(opt->choices[i]) == len && !memcmp(opt->choices[i], s, len)) {
				assert(len < opt->size);
				out->num = (int64_t)i;
				rc = 0;
				break;
			}
		}
		break;
	}

	if (rc == 0 && config_is_number(opt->type) &&
	    (out->num < opt->min || out->num > opt->max))
		rc = -ERANGE;
	if (rc == -ERANGE) {
		snprintf(reason, size, "must be between %" PRId64 " and %" PRId64 "%s, got '%s'",
			 opt->min, opt->max, unit, config_quote(quoted, sizeof(quoted), s, len));
		return -EINVAL;
	}
	if (rc) {
		snprintf(reason, size, "expects %s, got '%s'",
			 config_describe(opt, what, sizeof(what)),
			 config_quote(quoted, sizeof(quoted), s, len));
		return -EINVAL;
	}
	return 0;
}

static void config_store(const struct config_option *opt, const struct config_value *v,
			 void *target)
{
	char *field = (char *)target + opt->offset;

	switch (opt->type) {
	case CONFIG_STRING:
		assert(v->len < opt->size);
		memcpy(field, v->str, v->len);
		field[v->len] = '\0';
		break;
	case CONFIG_CHOICE:
		strcpy(field, opt->choices[v->num]);
		break;
	case CONFIG_INT:
	case CONFIG_BYTES:
	case CONFIG_DURATION:
	case CONFIG_SECONDS:
		memcpy(field, &v->num, sizeof(int64_t));
		break;
	case CONFIG_BOOL: {
		bool b = v->num != 0;

		memcpy(field, &b, sizeof(b));
		break;
	}
	case CONFIG_MODE: {
		uint32_t mode = (uint32_t)v->num;

		assert(v->num >= 0 && v->num <= 07777);
		memcpy(field, &mode, sizeof(mode));
		break;
	}
	}
}

static const struct config_option *config_find(const struct config_option *options, size_t count,
					       const char *key, size_t *index)
{
	for (size_t i = 0; i < count; i++) {
		if (strcmp(options[i].key, key) == 0) {
			if (index)
				*index = i;
			return &options[i];
		}
	}
	return NULL;
}

/* Whether some key continues path[len] with a dot; the first such option in *index. */
static bool config_find_section(const struct config_option *options, size_t count, const char *path,
				size_t len, size_t *index)
{
	for (size_t i = 0; i < count; i++) {
		if (strncmp(options[i].key, path, len) == 0 && options[i].key[len] == '.') {
			*index = i;
			return true;
		}
	}
	return false;
}

static int config_fail(struct config_ctx *ctx, size_t line, int rc, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* Writes "NAME:LINE: message" into the caller's err; returns rc. */
static int config_fail(struct config_ctx *ctx, size_t line, int rc, const char *fmt, ...)
{
	va_list ap;
	int n;

	n = snprintf(ctx->err, ctx->err_size, "%s:%zu: ", ctx->name, line);
	if (n >= 0 && (size_t)n < ctx->err_size) {
		va_start(ap, fmt);
		vsnprintf(ctx->err + n, ctx->err_size - (size_t)n, fmt, ap);
		va_end(ap);
	}
	return rc;
}

/* The key being read, quoted for a message. */
static const char *config_key(struct config_ctx *ctx, char *buf, size_t size)
{
	return config_quote(buf, size, ctx->path, ctx->path_len);
}

static size_t config_line_at(const struct config_ctx *ctx, size_t offset)
{
	size_t line = 1;

	for (size_t i = 0; i < offset && i < ctx->text_len; i++)
		line += ctx->text[i] == '\n';
	return line;
}

static int config_syntax_error(struct config_ctx *ctx, const yaml_parser_t *p)
{
	const char *problem = p->problem ? p->problem : "invalid YAML";

	switch (p->error) {
	case YAML_MEMORY_ERROR:
		snprintf(ctx->err, ctx->err_size, "%s: out of memory", ctx->name);
		return -ENOMEM;
	case YAML_READER_ERROR:
		return config_fail(ctx, config_line_at(ctx, p->problem_offset), -EINVAL, "%s",
				   problem);
	default:
		if (p->context)
			return config_fail(ctx, p->problem_mark.line + 1, -EINVAL,
					   "%s (%s at line %zu)", problem, p->context,
					   p->context_mark.line + 1);
		return config_fail(ctx, p->problem_mark.line + 1, -EINVAL, "%s", problem);
	}
}

static int config_next(struct config_ctx *ctx, yaml_event_t *ev)
{
	if (!yaml_parser_parse(&ctx->parser, ev))
		return config_syntax_error(ctx, &ctx->parser);
	return 0;
}

/*
 * Runs the text through a parser of its own once, so that a broken document
 * reports the parser's error rather than whatever key comes before it.
 */
static int config_check_syntax(struct config_ctx *ctx)
{
	yaml_parser_t parser;
	yaml_event_t ev;
	bool end;
	int rc = 0;

	if (!yaml_parser_initialize(&parser)) {
		snprintf(ctx->err, ctx->err_size, "%s: out of memory", ctx->name);
		return -ENOMEM;
	}
	yaml_parser_set_input_string(&parser, (const unsigned char *)ctx->text, ctx->text_len);
	do {
		if (!yaml_parser_parse(&parser, &ev)) {
			rc = config_syntax_error(ctx, &parser);
			break;
		}
		end = ev.type == YAML_STREAM_END_EVENT;
		yaml_event_delete(&ev);
	} while (!end);
	yaml_parser_delete(&parser);
	return rc;
}

static const char *config_event_what(const yaml_event_t *ev)
{
	switch (ev->type) {
	case YAML_SCALAR_EVENT:
		return "a scalar";
	case YAML_SEQUENCE_START_EVENT:
		return "a sequence";
	case YAML_MAPPING_START_EVENT:
		return "a mapping";
	case YAML_ALIAS_EVENT:
		return "an alias";
	default:
		return "an unexpected event";
	}
}

/* Sets path to path[0..prefix_len) "." key. */
static int config_path_push(struct config_ctx *ctx, size_t prefix_len, const char *key,
			    size_t key_len)
{
	size_t need = prefix_len + 1 + key_len + 1;

	assert(prefix_len <= ctx->path_len);
	if (need > ctx->path_cap) {
		size_t cap = ctx->path_cap ? ctx->path_cap : 64;
		char *path;

		while (cap < need)
			cap *= 2;
		path = realloc(ctx->path, cap);
		if (!path) {
			snprintf(ctx->err, ctx->err_size, "%s: out of memory", ctx->name);
			return -ENOMEM;
		}
		ctx->path = path;
		ctx->path_cap = cap;
	}
	ctx->path_len = prefix_len;
	if (prefix_len)
		ctx->path[ctx->path_len++] = '.';
	memcpy(ctx->path + ctx->path_len, key, key_len);
	ctx->path_len += key_len;
	ctx->path[ctx->path_len] = '\0';
	return 0;
}

/* Whether the path names an option (0, *index set), a section (1, *section set) or nothing. */
static int config_resolve(struct config_ctx *ctx, size_t line, const struct config_option **opt,
			  size_t *index, size_t *section)
{
	char key[CONFIG_QUOTE_KEY + 4];

	*opt = NULL;
	/* A key with a NUL byte in it (a quoted "\0") names nothing. */
	if (memchr(ctx->path, '\0', ctx->path_len) == NULL) {
		*opt = config_find(ctx->options, ctx->count, ctx->path, index);
		if (*opt)
			return 0;
		if (config_find_section(ctx->options, ctx->count, ctx->path, ctx->path_len,
					section))
			return 1;
	}
	return config_fail(ctx, line, -EINVAL, "unknown key '%s'",
			   config_key(ctx, key, sizeof(key)));
}

static int config_read_mapping(struct config_ctx *ctx, size_t prefix_len);

/*
 * Reads the mapping of a known section. Only known sections are entered, so
 * the recursion is as deep as the table's keys have dots.
 */
static int config_enter_section(struct config_ctx *ctx, size_t line, size_t section)
{
	char key[CONFIG_QUOTE_KEY + 4];
	struct config_section *s;

	for (size_t i = 0; i < ctx->nsections; i++) {
		s = &ctx->sections[i];
		if (s->len == ctx->path_len &&
		    !memcmp(ctx->options[s->opt].key, ctx->path, ctx->path_len))
			return config_fail(ctx, line, -EINVAL,
					   "duplicate key '%s' (first on line %zu)",
					   config_key(ctx, key, sizeof(key)), s->line);
	}
	/* Each section is a distinct dotted prefix of some key: room was made for all. */
	assert(ctx->nsections < ctx->sections_cap);
	s = &ctx->sections[ctx->nsections++];
	s->opt = section;
	s->len = ctx->path_len;
	s->line = line;
	return config_read_mapping(ctx, ctx->path_len);
}

static int config_stage_scalar(struct config_ctx *ctx, size_t line, const struct config_option *opt,
			       size_t index, const yaml_event_t *ev)
{
	char key[CONFIG_QUOTE_KEY + 4], reason[CONFIG_REASON_MAX];
	struct config_staged *st = &ctx->staged[index];
	struct config_value v;
	int rc;

	if (st->set)
		return config_fail(ctx, line, -EINVAL, "duplicate key '%s' (first on line %zu)",
				   config_key(ctx, key, sizeof(key)), st->line);
	rc = config_parse_value(opt, (const char *)ev->data.scalar.value, ev->data.scalar.length,
				config_scalar_is_null(ev), &v, reason, sizeof(reason));
	if (rc)
		return config_fail(ctx, line, rc, "key '%s' %s", config_key(ctx, key, sizeof(key)),
				   reason);
	if (opt->type == CONFIG_STRING) {
		st->str = malloc(v.len + 1);
		if (!st->str) {
			snprintf(ctx->err, ctx->err_size, "%s: out of memory", ctx->name);
			return -ENOMEM;
		}
		memcpy(st->str, v.str, v.len);
		st->str[v.len] = '\0';
	}
	st->num = v.num;
	st->set = true;
	st->line = line;
	return 0;
}

/* Reads the value of the key in ctx->path, whose key sits on `line`. */
static int config_read_value(struct config_ctx *ctx, size_t line)
{
	char key[CONFIG_QUOTE_KEY + 4], what[CONFIG_REASON_MAX / 2];
	const struct config_option *opt;
	size_t index = 0, section = 0;
	yaml_event_t ev;
	int rc, kind;

	rc = config_next(ctx, &ev);
	if (rc)
		return rc;
	kind = config_resolve(ctx, line, &opt, &index, &section);
	if (kind < 0) {
		rc = kind;
		goto delete_event;
	}

	switch (ev.type) {
	case YAML_SCALAR_EVENT:
		if (kind == 1)
			rc = config_fail(ctx, line, -EINVAL,
					 "key '%s' is a section, expected a mapping",
					 config_key(ctx, key, sizeof(key)));
		else
			rc = config_stage_scalar(ctx, line, opt, index, &ev);
		break;
	case YAML_MAPPING_START_EVENT:
		if (kind == 1) {
			yaml_event_delete(&ev);
			return config_enter_section(ctx, line, section);
		}
		/* fall through */
	case YAML_SEQUENCE_START_EVENT:
		if (kind == 1)
			rc = config_fail(ctx, line, -EINVAL,
					 "key '%s' is a section, expected a mapping",
					 config_key(ctx, key, sizeof(key)));
		else
			rc = config_fail(ctx, line, -EINVAL, "key '%s' expects %s, got %s",
					 config_key(ctx, key, sizeof(key)),
					 config_describe(opt, what, sizeof(what)),
					 config_event_what(&ev));
		break;
	case YAML_ALIAS_EVENT:
		rc = config_fail(ctx, line, -EINVAL, "key '%s': aliases are not supported",
				 config_key(ctx, key, sizeof(key)));
		break;
	default:
		assert(!"value event out of place");
		rc = config_fail(ctx, line, -EINVAL, "unexpected YAML event");
		break;
	}

delete_event:
	yaml_event_delete(&ev);
	return rc;
}

/* Reads key/value pairs up to the end of a mapping; path[0..prefix_len) names it. */
static int config_read_mapping(struct config_ctx *ctx, size_t prefix_len)
{
	for (;;) {
		yaml_event_t ev;
		size_t line;
		int rc;

		rc = config_next(ctx, &ev);
		if (rc)
			return rc;
		if (ev.type == YAML_MAPPING_END_EVENT) {
			yaml_event_delete(&ev);
			return 0;
		}
		line = ev.start_mark.line + 1;
		if (ev.type == YAML_ALIAS_EVENT)
			rc = config_fail(ctx, line, -EINVAL, "aliases are not supported");
		else if (ev.type != YAML_SCALAR_EVENT)
			rc = config_fail(ctx, line, -EINVAL, "keys must be scalars, got %s",
					 config_event_what(&ev));
		else
			rc = config_path_push(ctx, prefix_len, (const char *)ev.data.scalar.value,
					      ev.data.scalar.length);
		yaml_event_delete(&ev);
		if (rc)
			return rc;
		rc = config_read_value(ctx, line);
		if (rc)
			return rc;
	}
}

/* Reads the whole stream: none or one document whose root is a mapping (or null). */
static int config_read_stream(struct config_ctx *ctx)
{
	yaml_event_t ev;
	int rc;

	rc = config_next(ctx, &ev);
	if (rc)
		return rc;
	assert(ev.type == YAML_STREAM_START_EVENT);
	yaml_event_delete(&ev);

	rc = config_next(ctx, &ev);
	if (rc)
		return rc;
	if (ev.type == YAML_STREAM_END_EVENT) {
		yaml_event_delete(&ev); /* empty, or only comments */
		return 0;
	}
	assert(ev.type == YAML_DOCUMENT_START_EVENT);
	yaml_event_delete(&ev);

	rc = config_next(ctx, &ev);
	if (rc)
		return rc;
	if (ev.type == YAML_MAPPING_START_EVENT) {
		yaml_event_delete(&ev);
		rc = config_read_mapping(ctx, 0);
		if (rc)
			return rc;
	} else {
		bool null = ev.type == YAML_SCALAR_EVENT && config_scalar_is_null(&ev);

		if (!null)
			rc = config_fail(ctx, ev.start_mark.line + 1, -EINVAL,
					 "the document must be a mapping of keys, got %s",
					 config_event_what(&ev));
		yaml_event_delete(&ev);
		if (rc)
			return rc;
	}

	rc = config_next(ctx, &ev);
	if (rc)
		return rc;
	assert(ev.type == YAML_DOCUMENT_END_EVENT);
	yaml_event_delete(&ev);

	rc = config_next(ctx, &ev);
	if (rc)
		return rc;
	if (ev.type != YAML_STREAM_END_EVENT)
		rc = config_fail(ctx, ev.start_mark.line + 1, -EINVAL,
				 "only one YAML document is allowed");
	yaml_event_delete(&ev);
	return rc;
}

int config_load_buffer(const char *name, const char *text, size_t text_len,
		       const struct config_option *options, size_t count, void *target, char *err,
		       size_t err_size)
{
	struct config_ctx ctx = {
		.name = name,
		.text = text_len ? text : "",
		.text_len = text_len,
		.options = options,
		.count = count,
		.err = err,
		.err_size = err_size,
	};
	int rc;

	assert(name && target);
	assert(text || text_len == 0);
	assert(err || err_size == 0);
	config_check_table(options, count);

	if (text_len > CONFIG_MAX_BYTES) {
		snprintf(err, err_size, "%s: too large (%zu bytes, at most %d)", name, text_len,
			 CONFIG_MAX_BYTES);
		return -EFBIG;
	}

	/* One slot per dot of every key bounds the sections a valid document opens. */
	for (size_t i = 0; i < count; i++)
		for (const char *c = options[i].key; *c; c++)
			ctx.sections_cap += *c == '.';
	ctx.staged = calloc(count + 1, sizeof(*ctx.staged));
	ctx.sections = calloc(ctx.sections_cap + 1, sizeof(*ctx.sections));
	if (!ctx.staged || !ctx.sections) {
		snprintf(err, err_size, "%s: out of memory", name);
		rc = -ENOMEM;
		goto free_staged;
	}

	rc = config_check_syntax(&ctx);
	if (rc)
		goto free_staged;

	if (!yaml_parser_initialize(&ctx.parser)) {
		snprintf(err, err_size, "%s: out of memory", name);
		rc = -ENOMEM;
		goto free_staged;
	}
	yaml_parser_set_input_string(&ctx.parser, (const unsigned char *)ctx.text, text_len);

	rc = config_read_stream(&ctx);
	if (rc)
		goto delete_parser;

	/* All of it is valid: only now touch the target. */
	for (size_t i = 0; i < count; i++) {
		const struct config_staged *st = &ctx.staged[i];
		struct config_value v = { .num = st->num, .str = st->str };

		if (!st->set)
			continue;
		if (st->str)
			v.len = strlen(st->str);
		config_store(&options[i], &v, target);
	}

delete_parser:
	yaml_parser_delete(&ctx.parser);
free_staged:
	if (ctx.staged)
		for (size_t i = 0; i < count; i++)
			free(ctx.staged[i].str);
	free(ctx.staged);
	free(ctx.sections);
	free(ctx.path);
	return rc;
}

/* Reads all of fd into a new buffer; -EFBIG past CONFIG_MAX_BYTES. */
static int config_read_fd(int fd, size_t hint, char **out, size_t *out_len)
{
	size_t cap = hint + 1, len = 0;
	char *buf;

	if (cap < 4096)
		cap = 4096;
	if (cap > CONFIG_MAX_BYTES + 1)
		cap = CONFIG_MAX_BYTES + 1;
	buf = malloc(cap);
	if (!buf)
		return -ENOMEM;
	for (;;) {
		ssize_t n;

		if (len == cap) {
			char *grown;

			if (cap > CONFIG_MAX_BYTES) {
				free(buf);
				return -EFBIG;
			}
			cap = cap * 2 > CONFIG_MAX_BYTES + 1 ? CONFIG_MAX_BYTES + 1 : cap * 2;
			grown = realloc(buf, cap);
			if (!grown) {
				free(buf);
				return -ENOMEM;
			}
			buf = grown;
		}
		n = read(fd, buf + len, cap - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			int rc = -errno;

			free(buf);
			return rc;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	if (len > CONFIG_MAX_BYTES) {
		free(buf);
		return -EFBIG;
	}
	*out = buf;
	*out_len = len;
	return 0;
}

int config_load_file(const char *path, const struct config_option *options, size_t count,
		     void *target, char *err, size_t err_size)
{
	struct stat st;
	size_t len = 0;
	char *buf = NULL;
	int fd, rc;

	assert(path);
	assert(err || err_size == 0);

	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0) {
		rc = -errno;
		snprintf(err, err_size, "%s: %s", path, strerror(-rc));
		return rc;
	}
	if (fstat(fd, &st) < 0) {
		rc = -errno;
		snprintf(err, err_size, "%s: %s", path, strerror(-rc));
		goto close_fd;
	}
	if (S_ISREG(st.st_mode) && st.st_size > CONFIG_MAX_BYTES) {
		snprintf(err, err_size, "%s: too large (%jd bytes, at most %d)", path,
			 (intmax_t)st.st_size, CONFIG_MAX_BYTES);
		rc = -EFBIG;
		goto close_fd;
	}

	rc = config_read_fd(fd, S_ISREG(st.st_mode) ? (size_t)st.st_size : 0, &buf, &len);
	if (rc == -EFBIG) {
		snprintf(err, err_size, "%s: too large (more than %d bytes)", path,
			 CONFIG_MAX_BYTES);
		goto close_fd;
	}
	if (rc) {
		snprintf(err, err_size, "%s: %s", path, strerror(-rc));
		goto close_fd;
	}

	rc = config_load_buffer(path, buf, len, options, count, target, err, err_size);
	free(buf);
close_fd:
	close(fd);
	return rc;
}

int config_set(const struct config_option *options, size_t count, void *target, const char *key,
	       const char *value, char *err, size_t err_size)
{
	char qkey[CONFIG_QUOTE_KEY + 4], reason[CONFIG_REASON_MAX];
	const struct config_option *opt;
	struct config_value v;
	int rc;

	assert(target && key && value);
	assert(err || err_size == 0);
	config_check_table(options, count);

	config_quote(qkey, sizeof(qkey), key, strlen(key));
	opt = config_find(options, count, key, NULL);
	if (!opt) {
		snprintf(err, err_size, "%s: unknown key", qkey);
		return -ENOENT;
	}
	rc = config_parse_value(opt, value, strlen(value), false, &v, reason, sizeof(reason));
	if (rc) {
		snprintf(err, err_size, "%s: %s", qkey, reason);
		return rc;
	}
	config_store(opt, &v, target);
	return 0;
}

/* Whether `opt`'s field holds the same value in `a` and `b`. */
static bool config_same(const struct config_option *opt, const void *a, const void *b)
{
	const char *x = (const char *)a + opt->offset, *y = (const char *)b + opt->offset;

	switch (opt->type) {
	case CONFIG_STRING:
	case CONFIG_CHOICE:
		return strncmp(x, y, opt->size) == 0;
	case CONFIG_INT:
	case CONFIG_BYTES:
	case CONFIG_DURATION:
	case CONFIG_SECONDS:
		return memcmp(x, y, sizeof(int64_t)) == 0;
	case CONFIG_BOOL:
		return memcmp(x, y, sizeof(bool)) == 0;
	case CONFIG_MODE:
		return memcmp(x, y, sizeof(uint32_t)) == 0;
	}
	return false;
}

size_t config_diff(const struct config_option *options, size_t count, const void *a,
		   const void *b, char *keys, size_t keys_size)
{
	size_t changed = 0, used = 0;

	assert(a && b);
	assert(keys || keys_size == 0);
	if (keys_size)
		keys[0] = '\0';
	for (size_t i = 0; i < count; i++) {
		if (config_same(&options[i], a, b))
			continue;
		if (used < keys_size) {
			int n = snprintf(keys + used, keys_size - used, "%s%s", changed ? ", " : "",
					 options[i].key);

			used += n > 0 ? (size_t)n : 0;
		}
		changed++;
	}
	return changed;
}

/* --- command lines. */

int config_command_line(const struct config_command_line *cl, void *config, int argc,
			char **argv, const char **config_path)
{
	enum { OPT_CONFIG = 256, OPT_HELP, OPT_VERSION, OPT_KEY_FIRST };
	struct option *options = calloc(cl->flag_count + 4, sizeof(*options));
	char err[512];
	int opt, rc = -1;

	*config_path = NULL;
	if (!options) {
		fprintf(stderr, "%s: out of memory\n", cl->program);
		return 2;
	}
	options[0] = (struct option){ "config", required_argument, NULL, OPT_CONFIG };
	options[1] = (struct option){ "help", no_argument, NULL, OPT_HELP };
	options[2] = (struct option){ "version", no_argument, NULL, OPT_VERSION };
	for (size_t i = 0; i < cl->flag_count; i++)
		options[3 + i] = (struct option){ cl->flags[i].flag,
						  cl->flags[i].no_value ? no_argument
									: required_argument,
						  NULL, OPT_KEY_FIRST + (int)i };

	/* Pass 1: --config, --help, --version and flag syntax. */
	optind = 1;
	opterr = 1;
	while (rc < 0 && (opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
		switch (opt) {
		case OPT_CONFIG:
			*config_path = optarg;
			break;
		case OPT_HELP:
			cl->usage(stdout);
			rc = 0;
			break;
		case OPT_VERSION:
			printf("%s %s\n", cl->program, cl->version);
			rc = 0;
			break;
		case '?':
			cl->usage(stderr);
			rc = 2;
			break;
		default:
			break;
		}
	}
	if (rc < 0 && optind < argc) {
		fprintf(stderr, "%s: unexpected argument '%s'\n", cl->program, argv[optind]);
		cl->usage(stderr);
		rc = 2;
	}
	if (rc < 0 && *config_path && cl->load(config, *config_path, err, sizeof(err)) < 0) {
		fprintf(stderr, "%s: %s\n", cl->program, err);
		rc = 2;
	}

	/* Pass 2: flags override the file. */
	optind = 1;
	opterr = 0;
	while (rc < 0 && (opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
		const struct config_flag *flag;

		if (opt < OPT_KEY_FIRST)
			continue;
		flag = &cl->flags[opt - OPT_KEY_FIRST];
		if (cl->set(config, flag->key, flag->no_value ? "true" : optarg, err,
			    sizeof(err)) < 0) {
			fprintf(stderr, "%s: --%s: %s\n", cl->program, flag->flag, err);
			rc = 2;
		}
	}
	free(options);
	return rc;
}
