/* test_config: the YAML config reader and config_set, through a small option table. */
#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/config.h"

struct settings {
	char socket[32];
	uint32_t socket_mode;
	bool verbose;
	int64_t offset;
	char role[8];
	int64_t shutdown_timeout_ms;
	int64_t max_connections;
	int64_t max_message_bytes;
	int64_t idle_timeout_ms;
	char deep[8];
	int64_t wide;
	int64_t huge;
	int64_t wait_ms;
};

static const char *const roles[] = { "peer", "seed", NULL };

#define OPT(k, t, f, ...) \
	{ .key = (k), .type = (t), .offset = offsetof(struct settings, f), __VA_ARGS__ }

static const struct config_option options[] = {
	OPT("socket", CONFIG_STRING, socket, .size = sizeof(((struct settings *)0)->socket)),
	OPT("socket_mode", CONFIG_MODE, socket_mode),
	OPT("verbose", CONFIG_BOOL, verbose),
	OPT("offset", CONFIG_INT, offset, .min = -1000, .max = 1000),
	OPT("role", CONFIG_CHOICE, role, .size = sizeof(((struct settings *)0)->role),
	    .choices = roles),
	OPT("shutdown_timeout", CONFIG_DURATION, shutdown_timeout_ms, .min = 0,
	    .max = 3600 * 1000),
	OPT("limits.max_connections", CONFIG_INT, max_connections, .min = 1, .max = 65536),
	OPT("limits.max_message_bytes", CONFIG_BYTES, max_message_bytes, .min = 0,
	    .max = INT64_C(4) << 30),
	OPT("limits.idle_timeout", CONFIG_DURATION, idle_timeout_ms, .min = 0,
	    .max = 24 * 3600 * 1000),
	OPT("a.b.c", CONFIG_STRING, deep, .size = sizeof(((struct settings *)0)->deep)),
	OPT("wide", CONFIG_INT, wide, .min = INT64_MIN, .max = INT64_MAX),
	OPT("huge", CONFIG_BYTES, huge, .min = 0, .max = INT64_MAX),
	OPT("wait", CONFIG_SECONDS, wait_ms, .min = 1, .max = 24 * 3600 * 1000),
};

#define NOPTIONS (sizeof(options) / sizeof(options[0]))
#define NAME	 "/etc/x.yaml"
#define MIB	 (1 << 20)
#define X10	 "xxxxxxxxxx"
#define X200	 X10 X10 X10 X10 X10 X10 X10 X10 X10 X10 X10 X10 X10 X10 X10 X10 X10 X10 X10 X10

static struct settings cfg;
static char err[512];

static void set_defaults(struct settings *s)
{
	memset(s, 0, sizeof(*s));
	strcpy(s->socket, "/run/default.sock");
	s->socket_mode = 0660;
	s->verbose = false;
	s->offset = 7;
	strcpy(s->role, "peer");
	s->shutdown_timeout_ms = 5000;
	s->max_connections = 4096;
	s->max_message_bytes = MIB;
	s->idle_timeout_ms = 300000;
	strcpy(s->deep, "d");
	s->wide = 1;
	s->huge = 2;
}

static int load(const char *text)
{
	set_defaults(&cfg);
	strcpy(err, "untouched");
	return config_load_buffer(NAME, text, strlen(text), options, NOPTIONS, &cfg, err,
				  sizeof(err));
}

static int set(const char *key, const char *value)
{
	strcpy(err, "untouched");
	return config_set(options, NOPTIONS, &cfg, key, value, err, sizeof(err));
}

/* Loads text, expects -EINVAL with exactly `msg`, and the settings left at their defaults. */
static void expect_error(const char *text, const char *msg)
{
	struct settings defaults;
	int rc = load(text);

	cr_assert_eq(rc, -EINVAL, "rc %d for:\n%s", rc, text);
	cr_assert_str_eq(err, msg, "for:\n%s", text);
	set_defaults(&defaults);
	cr_assert(memcmp(&cfg, &defaults, sizeof(cfg)) == 0, "settings changed by a failed load");
}

static void expect_ok(const char *text)
{
	int rc = load(text);

	cr_assert_eq(rc, 0, "rc %d (%s) for:\n%s", rc, err, text);
}

/* Writes `len` bytes of `text` to a new file in a fresh directory; returns its path. */
static char *write_temp(const char *text, size_t len)
{
	char dir[] = "/tmp/test_config.XXXXXX";
	char *path;
	int fd;

	cr_assert_not_null(mkdtemp(dir));
	path = malloc(sizeof(dir) + sizeof("/ringfly.yaml"));
	cr_assert_not_null(path);
	sprintf(path, "%s/ringfly.yaml", dir);
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	cr_assert(fd >= 0);
	for (size_t done = 0; done < len;) {
		ssize_t n = write(fd, text + done, len - done);

		cr_assert(n > 0);
		done += (size_t)n;
	}
	close(fd);
	return path;
}

static void remove_temp(char *path)
{
	char *slash;

	unlink(path);
	slash = strrchr(path, '/');
	*slash = '\0';
	rmdir(path);
	free(path);
}

/* Happy paths, type by type. */

Test(config, string)
{
	expect_ok("socket: /run/ringfly/ringflyd.sock\n");
	cr_assert_str_eq(cfg.socket, "/run/ringfly/ringflyd.sock");
	expect_ok("socket: \"with: colon # and hash\"\n");
	cr_assert_str_eq(cfg.socket, "with: colon # and hash");
	expect_ok("socket: ''\n");
	cr_assert_str_eq(cfg.socket, "");
	expect_ok("socket: 12\n");
	cr_assert_str_eq(cfg.socket, "12");
}

Test(config, string_null_is_empty)
{
	expect_ok("socket:\n");
	cr_assert_str_eq(cfg.socket, "");
	expect_ok("socket: ~\n");
	cr_assert_str_eq(cfg.socket, "");
	expect_ok("socket: 'null'\n");
	cr_assert_str_eq(cfg.socket, "null");
}

Test(config, string_longest_that_fits)
{
	/* char[32]: 31 bytes and the NUL. */
	expect_ok("socket: 0123456789012345678901234567890\n");
	cr_assert_str_eq(cfg.socket, "0123456789012345678901234567890");
}

Test(config, integer)
{
	expect_ok("offset: 42\n");
	cr_assert_eq(cfg.offset, 42);
	expect_ok("offset: -1000\n");
	cr_assert_eq(cfg.offset, -1000);
	expect_ok("offset: +1000\n");
	cr_assert_eq(cfg.offset, 1000);
	expect_ok("offset: 0\n");
	cr_assert_eq(cfg.offset, 0);
	expect_ok("offset: '12'\n");
	cr_assert_eq(cfg.offset, 12);
	expect_ok("wide: -9223372036854775808\n");
	cr_assert_eq(cfg.wide, INT64_MIN);
	expect_ok("wide: 9223372036854775807\n");
	cr_assert_eq(cfg.wide, INT64_MAX);
}

Test(config, boolean)
{
	static const char *const yes[] = { "true", "yes", "on", "True", "YES", "On" };
	static const char *const no[] = { "false", "no", "off", "FALSE", "No", "OFF" };
	char text[64];

	for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
		snprintf(text, sizeof(text), "verbose: %s\n", yes[i]);
		expect_ok(text);
		cr_assert_eq(cfg.verbose, true, "%s", yes[i]);
	}
	for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++) {
		snprintf(text, sizeof(text), "verbose: %s\n", no[i]);
		set_defaults(&cfg);
		cfg.verbose = true;
		cr_assert_eq(config_load_buffer(NAME, text, strlen(text), options, NOPTIONS, &cfg,
						err, sizeof(err)),
			     0, "%s", err);
		cr_assert_eq(cfg.verbose, false, "%s", no[i]);
	}
}

Test(config, mode)
{
	expect_ok("socket_mode: 0600\n");
	cr_assert_eq(cfg.socket_mode, 0600);
	expect_ok("socket_mode: 640\n");
	cr_assert_eq(cfg.socket_mode, 0640);
	expect_ok("socket_mode: 0\n");
	cr_assert_eq(cfg.socket_mode, 0);
	expect_ok("socket_mode: 07777\n");
	cr_assert_eq(cfg.socket_mode, 07777);
	expect_ok("socket_mode: 2770\n");
	cr_assert_eq(cfg.socket_mode, 02770);
}

Test(config, bytes)
{
	static const struct {
		const char *text;
		int64_t value;
	} cases[] = {
		{ "0", 0 },
		{ "4096", 4096 },
		{ "100B", 100 },
		{ "64K", 64 << 10 },
		{ "64k", 64 << 10 },
		{ "64KiB", 64 << 10 },
		{ "3M", 3 << 20 },
		{ "3MiB", 3 << 20 },
		{ "2G", INT64_C(2) << 30 },
		{ "4GiB", INT64_C(4) << 30 },
	};
	char text[64];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		snprintf(text, sizeof(text), "limits:\n  max_message_bytes: %s\n", cases[i].text);
		expect_ok(text);
		cr_assert_eq(cfg.max_message_bytes, cases[i].value, "%s", cases[i].text);
	}
	expect_ok("huge: 8589934591G\n");
	cr_assert_eq(cfg.huge, INT64_C(8589934591) << 30);
}

Test(config, duration)
{
	static const struct {
		const char *text;
		int64_t ms;
	} cases[] = {
		{ "0", 0 }, { "250", 250 }, { "500ms", 500 }, { "5s", 5000 },
		{ "2m", 120000 }, { "1h", 3600000 },
	};
	char text[64];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		snprintf(text, sizeof(text), "shutdown_timeout: %s\n", cases[i].text);
		expect_ok(text);
		cr_assert_eq(cfg.shutdown_timeout_ms, cases[i].ms, "%s", cases[i].text);
	}
}

/* The CLI's --timeout: a bare integer is seconds, a suffix says otherwise. */
Test(config, seconds)
{
	static const struct {
		const char *text;
		int64_t ms;
	} cases[] = {
		{ "1", 1000 },	  { "30", 30000 }, { "500ms", 500 }, { "5s", 5000 },
		{ "2m", 120000 }, { "1h", 3600000 }, { "86400", 86400000 },
	};
	char text[64];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		snprintf(text, sizeof(text), "wait: %s\n", cases[i].text);
		expect_ok(text);
		cr_assert_eq(cfg.wait_ms, cases[i].ms, "%s", cases[i].text);
	}
	expect_error("wait: 86401\n",
		     NAME ":1: key 'wait' must be between 1 and 86400000 ms, got '86401'");
	expect_error("wait: 0\n", NAME ":1: key 'wait' must be between 1 and 86400000 ms, got '0'");
	expect_error("wait: soon\n", NAME ":1: key 'wait' expects a duration such as 30 "
					   "(seconds), 500ms, 5s, 1m or 1h, got 'soon'");
}

Test(config, choice)
{
	expect_ok("role: seed\n");
	cr_assert_str_eq(cfg.role, "seed");
	expect_ok("role: peer\n");
	cr_assert_str_eq(cfg.role, "peer");
}

Test(config, full_document)
{
	expect_ok("# ringflyd configuration\n"
		  "socket: /run/r.sock\n"
		  "socket_mode: 0600\n"
		  "verbose: yes\n"
		  "role: seed\n"
		  "shutdown_timeout: 10s\n"
		  "\n"
		  "limits:\n"
		  "  max_connections: 64   # per node\n"
		  "  max_message_bytes: 2MiB\n"
		  "  idle_timeout: 0\n");
	cr_assert_str_eq(cfg.socket, "/run/r.sock");
	cr_assert_eq(cfg.socket_mode, 0600);
	cr_assert_eq(cfg.verbose, true);
	cr_assert_str_eq(cfg.role, "seed");
	cr_assert_eq(cfg.shutdown_timeout_ms, 10000);
	cr_assert_eq(cfg.max_connections, 64);
	cr_assert_eq(cfg.max_message_bytes, 2 << 20);
	cr_assert_eq(cfg.idle_timeout_ms, 0);
}

/* Nested keys. */

Test(config, nested_keys)
{
	expect_ok("limits:\n  max_connections: 64\n  idle_timeout: 1m\n");
	cr_assert_eq(cfg.max_connections, 64);
	cr_assert_eq(cfg.idle_timeout_ms, 60000);
	expect_ok("a:\n  b:\n    c: deep\n");
	cr_assert_str_eq(cfg.deep, "deep");
	expect_ok("limits: {max_connections: 9}\n");
	cr_assert_eq(cfg.max_connections, 9);
	expect_ok("limits: {}\n");
	cr_assert_eq(cfg.max_connections, 4096);
}

Test(config, dotted_key_written_flat)
{
	expect_ok("limits.max_connections: 12\na.b:\n  c: x\n");
	cr_assert_eq(cfg.max_connections, 12);
	cr_assert_str_eq(cfg.deep, "x");
}

/* Empty configs and defaults. */

Test(config, empty_buffer)
{
	expect_ok("");
	cr_assert_str_eq(err, "untouched");
	cr_assert_eq(config_load_buffer(NAME, NULL, 0, options, NOPTIONS, &cfg, err, sizeof(err)),
		     0);
}

Test(config, comments_only)
{
	struct settings defaults;

	expect_ok("# nothing here\n\n   # still nothing\n");
	set_defaults(&defaults);
	cr_assert(memcmp(&cfg, &defaults, sizeof(cfg)) == 0);
}

Test(config, empty_document)
{
	expect_ok("---\n");
	expect_ok("--- ~\n...\n");
}

Test(config, defaults_untouched)
{
	struct settings expected;

	expect_ok("offset: -3\nlimits:\n  idle_timeout: 2h\n");
	set_defaults(&expected);
	expected.offset = -3;
	expected.idle_timeout_ms = 2 * 3600 * 1000;
	cr_assert(memcmp(&cfg, &expected, sizeof(cfg)) == 0);
}

Test(config, failed_load_changes_nothing)
{
	/* expect_error checks every field against the defaults. */
	expect_error("socket: /new\noffset: 5\nverbose: on\nlimits:\n  max_connections: 0\n",
		     NAME ":5: key 'limits.max_connections' must be between 1 and 65536, got '0'");
}

/* Errors: keys. */

Test(config, unknown_key)
{
	expect_error("max_conections: 4\n", NAME ":1: unknown key 'max_conections'");
}

Test(config, unknown_nested_key)
{
	expect_error("limits:\n  max_connections: 4\n  max_conections: 4\n",
		     NAME ":3: unknown key 'limits.max_conections'");
	expect_error("nope:\n  x: 1\n", NAME ":1: unknown key 'nope'");
	expect_error("a:\n  b:\n    d: 1\n", NAME ":3: unknown key 'a.b.d'");
}

Test(config, unknown_key_with_a_sequence_value)
{
	expect_error("tags:\n  - a\n", NAME ":1: unknown key 'tags'");
}

Test(config, line_numbers_in_a_long_document)
{
	expect_error("# header\n"
		     "socket: /run/r.sock\n"
		     "\n"
		     "limits:\n"
		     "  # comment\n"
		     "  max_connections: 64\n"
		     "  idle_timeout: 5m\n"
		     "role: seed\n"
		     "shutdown_timeout: soon\n"
		     "verbose: yes\n",
		     NAME ":9: key 'shutdown_timeout' expects a duration such as 500ms, 5s, "
			  "1m or 1h, got 'soon'");
	expect_error("offset: 1\r\nverbose: no\r\nsockt: x\r\n", NAME ":3: unknown key 'sockt'");
}

Test(config, duplicate_key)
{
	expect_error("offset: 1\nverbose: no\noffset: 2\n",
		     NAME ":3: duplicate key 'offset' (first on line 1)");
	expect_error("limits:\n  max_connections: 1\n  max_connections: 2\n",
		     NAME ":3: duplicate key 'limits.max_connections' (first on line 2)");
}

Test(config, duplicate_section)
{
	expect_error("limits:\n  max_connections: 1\nrole: peer\nlimits:\n  idle_timeout: 1s\n",
		     NAME ":4: duplicate key 'limits' (first on line 1)");
}

Test(config, duplicate_between_flat_and_nested)
{
	expect_error("limits:\n  max_connections: 1\nlimits.max_connections: 2\n",
		     NAME ":3: duplicate key 'limits.max_connections' (first on line 2)");
}

Test(config, section_given_a_scalar)
{
	expect_error("limits: 5\n", NAME ":1: key 'limits' is a section, expected a mapping");
	expect_error("limits:\n", NAME ":1: key 'limits' is a section, expected a mapping");
	expect_error("a:\n  b: [1]\n", NAME ":2: key 'a.b' is a section, expected a mapping");
}

Test(config, mapping_for_a_scalar_key)
{
	expect_error("offset:\n  x: 1\n",
		     NAME ":1: key 'offset' expects an integer, got a mapping");
	expect_error("socket: {a: b}\n", NAME ":1: key 'socket' expects a string, got a mapping");
}

Test(config, sequence)
{
	expect_error("verbose: no\nsocket:\n  - /a\n  - /b\n",
		     NAME ":2: key 'socket' expects a string, got a sequence");
	expect_error("offset: [1, 2]\n",
		     NAME ":1: key 'offset' expects an integer, got a sequence");
}

Test(config, alias)
{
	expect_error("socket: &s /run/a.sock\nrole: *s\n",
		     NAME ":2: key 'role': aliases are not supported");
}

Test(config, complex_key)
{
	expect_error("? [a, b]\n: 1\n", NAME ":1: keys must be scalars, got a sequence");
}

/* Errors: values. */

Test(config, wrong_type_integer)
{
	expect_error("offset: lots\n", NAME ":1: key 'offset' expects an integer, got 'lots'");
	expect_error("offset: 12abc\n", NAME ":1: key 'offset' expects an integer, got '12abc'");
	expect_error("offset: 1.5\n", NAME ":1: key 'offset' expects an integer, got '1.5'");
	expect_error("offset: 0x10\n", NAME ":1: key 'offset' expects an integer, got '0x10'");
	expect_error("offset: '-'\n", NAME ":1: key 'offset' expects an integer, got '-'");
	expect_error("offset: ' 5'\n", NAME ":1: key 'offset' expects an integer, got ' 5'");
	expect_error("limits:\n  max_connections: lots\n",
		     NAME ":2: key 'limits.max_connections' expects an integer, got 'lots'");
}

Test(config, integer_out_of_range)
{
	expect_error("offset: 1001\n",
		     NAME ":1: key 'offset' must be between -1000 and 1000, got '1001'");
	expect_error("offset: -1001\n",
		     NAME ":1: key 'offset' must be between -1000 and 1000, got '-1001'");
}

Test(config, integer_overflow)
{
	expect_error("wide: 9223372036854775808\n",
		     NAME ":1: key 'wide' must be between -9223372036854775808 and "
			  "9223372036854775807, got '9223372036854775808'");
	expect_error("wide: -9223372036854775809\n",
		     NAME ":1: key 'wide' must be between -9223372036854775808 and "
			  "9223372036854775807, got '-9223372036854775809'");
	expect_error("offset: 99999999999999999999999\n",
		     NAME ":1: key 'offset' must be between -1000 and 1000, "
			  "got '99999999999999999999999'");
}

Test(config, null_for_a_non_string)
{
	expect_error("offset:\n", NAME ":1: key 'offset' expects an integer, got null");
	expect_error("role: ~\n", NAME ":1: key 'role' expects one of peer, seed, got null");
}

Test(config, wrong_type_boolean)
{
	expect_error("verbose: 1\n",
		     NAME ":1: key 'verbose' expects a boolean (true/false, yes/no, on/off), "
			  "got '1'");
	expect_error("verbose: yess\n",
		     NAME ":1: key 'verbose' expects a boolean (true/false, yes/no, on/off), "
			  "got 'yess'");
}

Test(config, bad_mode)
{
	expect_error("socket_mode: 999\n",
		     NAME ":1: key 'socket_mode' expects an octal mode such as 0660, got '999'");
	expect_error("socket_mode: 0o660\n",
		     NAME ":1: key 'socket_mode' expects an octal mode such as 0660, got '0o660'");
	expect_error("socket_mode: -660\n",
		     NAME ":1: key 'socket_mode' expects an octal mode such as 0660, got '-660'");
	expect_error("socket_mode: 10000\n",
		     NAME ":1: key 'socket_mode' must be at most 07777, got '10000'");
	expect_error("socket_mode: 7777777777777777777777\n",
		     NAME ":1: key 'socket_mode' must be at most 07777, "
			  "got '7777777777777777777777'");
}

Test(config, bad_bytes)
{
	expect_error("limits:\n  max_message_bytes: 1KB\n",
		     NAME ":2: key 'limits.max_message_bytes' expects a size such as 4096, 64K or "
			  "1MiB, got '1KB'");
	expect_error("limits:\n  max_message_bytes: 1 MiB\n",
		     NAME ":2: key 'limits.max_message_bytes' expects a size such as 4096, 64K or "
			  "1MiB, got '1 MiB'");
	expect_error("limits:\n  max_message_bytes: MiB\n",
		     NAME ":2: key 'limits.max_message_bytes' expects a size such as 4096, 64K or "
			  "1MiB, got 'MiB'");
	expect_error("limits:\n  max_message_bytes: 5G\n",
		     NAME ":2: key 'limits.max_message_bytes' must be between 0 and 4294967296 "
			  "bytes, got '5G'");
	expect_error("limits:\n  max_message_bytes: -1K\n",
		     NAME ":2: key 'limits.max_message_bytes' must be between 0 and 4294967296 "
			  "bytes, got '-1K'");
}

Test(config, bytes_overflow)
{
	expect_error("huge: 8589934592G\n",
		     NAME ":1: key 'huge' must be between 0 and 9223372036854775807 bytes, "
			  "got '8589934592G'");
}

Test(config, bad_duration)
{
	expect_error("shutdown_timeout: 1.5s\n",
		     NAME ":1: key 'shutdown_timeout' expects a duration such as 500ms, 5s, "
			  "1m or 1h, got '1.5s'");
	expect_error("shutdown_timeout: 5d\n",
		     NAME ":1: key 'shutdown_timeout' expects a duration such as 500ms, 5s, "
			  "1m or 1h, got '5d'");
	expect_error("shutdown_timeout: 2h\n",
		     NAME ":1: key 'shutdown_timeout' must be between 0 and 3600000 ms, got '2h'");
	expect_error("shutdown_timeout: -1s\n",
		     NAME ":1: key 'shutdown_timeout' must be between 0 and 3600000 ms, got '-1s'");
	expect_error("shutdown_timeout: 9223372036854775807h\n",
		     NAME ":1: key 'shutdown_timeout' must be between 0 and 3600000 ms, "
			  "got '9223372036854775807h'");
}

Test(config, bad_choice)
{
	expect_error("role: leader\n",
		     NAME ":1: key 'role' expects one of peer, seed, got 'leader'");
	expect_error("role: Peer\n", NAME ":1: key 'role' expects one of peer, seed, got 'Peer'");
}

Test(config, string_too_long)
{
	expect_error("socket: 01234567890123456789012345678901\n",
		     NAME ":1: key 'socket' is too long (32 bytes, at most 31)");
	expect_error("a:\n  b:\n    c: 12345678\n",
		     NAME ":3: key 'a.b.c' is too long (8 bytes, at most 7)");
}

Test(config, string_with_nul)
{
	expect_error("socket: \"a\\0b\"\n", NAME ":1: key 'socket' contains a NUL byte");
}

Test(config, message_stays_on_one_line)
{
	expect_error("offset: \"1\\n2\\t3\"\n",
		     NAME ":1: key 'offset' expects an integer, got '1?2?3'");
}

Test(config, long_value_is_cut_in_the_message)
{
	char text[256], msg[256];

	snprintf(text, sizeof(text), "offset: %.200s\n", X200);
	snprintf(msg, sizeof(msg), NAME ":1: key 'offset' expects an integer, got '%.64s...'",
		 X200);
	expect_error(text, msg);
}

/* Errors: document shape and syntax. */

Test(config, top_level_not_a_mapping)
{
	expect_error("- a\n- b\n",
		     NAME ":1: the document must be a mapping of keys, got a sequence");
	expect_error("# a comment\njust text\n",
		     NAME ":2: the document must be a mapping of keys, got a scalar");
}

Test(config, several_documents)
{
	expect_error("offset: 1\n---\noffset: 2\n", NAME ":2: only one YAML document is allowed");
}

Test(config, syntax_error)
{
	expect_error("offset: 1\n verbose: yes\n",
		     NAME ":2: mapping values are not allowed in this context");
	expect_error("offset: 1\nsocket: \"/run/a\n",
		     NAME ":3: found unexpected end of stream (while scanning a quoted scalar at "
			  "line 2)");
	expect_error("limits:\n  max_connections: 1\n idle_timeout: 1s\n",
		     NAME ":3: did not find expected key (while parsing a block mapping at "
			  "line 1)");
}

Test(config, syntax_error_wins_over_an_earlier_bad_key)
{
	expect_error("sockt: 1\noffset: [1\n",
		     NAME ":3: did not find expected ',' or ']' (while parsing a flow sequence at "
			  "line 2)");
}

Test(config, invalid_utf8)
{
	expect_error("offset: 1\nsocket: \xff\n", NAME ":2: invalid leading UTF-8 octet");
}

Test(config, buffer_over_limit)
{
	size_t len = MIB + 1;
	char *text = malloc(len);
	int rc;

	cr_assert_not_null(text);
	memset(text, '#', len);
	set_defaults(&cfg);
	rc = config_load_buffer(NAME, text, len, options, NOPTIONS, &cfg, err, sizeof(err));
	cr_assert_eq(rc, -EFBIG);
	cr_assert_str_eq(err, NAME ": too large (1048577 bytes, at most 1048576)");
	free(text);
}

Test(config, small_error_buffer_is_cut)
{
	char small[16];
	const char *text = "max_conections: 4\n";
	int rc;

	memset(small, 'X', sizeof(small));
	rc = config_load_buffer(NAME, text, strlen(text), options, NOPTIONS, &cfg, small,
				sizeof(small));
	cr_assert_eq(rc, -EINVAL);
	cr_assert_str_eq(small, "/etc/x.yaml:1: ");
	rc = config_set(options, NOPTIONS, &cfg, "offset", "lots", small, 4);
	cr_assert_eq(rc, -EINVAL);
	cr_assert_str_eq(small, "off");
}

/* config_set. */

Test(config, set_each_type)
{
	set_defaults(&cfg);
	cr_assert_eq(set("socket", "/tmp/s.sock"), 0, "%s", err);
	cr_assert_str_eq(cfg.socket, "/tmp/s.sock");
	cr_assert_eq(set("socket", ""), 0, "%s", err);
	cr_assert_str_eq(cfg.socket, "");
	cr_assert_eq(set("socket_mode", "0600"), 0, "%s", err);
	cr_assert_eq(cfg.socket_mode, 0600);
	cr_assert_eq(set("verbose", "on"), 0, "%s", err);
	cr_assert_eq(cfg.verbose, true);
	cr_assert_eq(set("offset", "-12"), 0, "%s", err);
	cr_assert_eq(cfg.offset, -12);
	cr_assert_eq(set("role", "seed"), 0, "%s", err);
	cr_assert_str_eq(cfg.role, "seed");
	cr_assert_eq(set("shutdown_timeout", "1m"), 0, "%s", err);
	cr_assert_eq(cfg.shutdown_timeout_ms, 60000);
	cr_assert_eq(set("limits.max_connections", "64"), 0, "%s", err);
	cr_assert_eq(cfg.max_connections, 64);
	cr_assert_eq(set("limits.max_message_bytes", "2MiB"), 0, "%s", err);
	cr_assert_eq(cfg.max_message_bytes, 2 << 20);
	cr_assert_str_eq(err, "untouched");
}

Test(config, set_bad_value)
{
	set_defaults(&cfg);
	cr_assert_eq(set("socket_mode", "999"), -EINVAL);
	cr_assert_str_eq(err, "socket_mode: expects an octal mode such as 0660, got '999'");
	cr_assert_eq(cfg.socket_mode, 0660);
	cr_assert_eq(set("limits.max_connections", "0"), -EINVAL);
	cr_assert_str_eq(err, "limits.max_connections: must be between 1 and 65536, got '0'");
	cr_assert_eq(cfg.max_connections, 4096);
	cr_assert_eq(set("role", "leader"), -EINVAL);
	cr_assert_str_eq(err, "role: expects one of peer, seed, got 'leader'");
	cr_assert_eq(set("shutdown_timeout", ""), -EINVAL);
	cr_assert_str_eq(err, "shutdown_timeout: expects a duration such as 500ms, 5s, 1m or 1h, "
			      "got ''");
	cr_assert_eq(set("socket", "0123456789012345678901234567890123"), -EINVAL);
	cr_assert_str_eq(err, "socket: is too long (34 bytes, at most 31)");
	cr_assert_str_eq(cfg.socket, "/run/default.sock");
}

Test(config, set_unknown_key)
{
	set_defaults(&cfg);
	cr_assert_eq(set("max_conections", "4"), -ENOENT);
	cr_assert_str_eq(err, "max_conections: unknown key");
	cr_assert_eq(set("limits", "4"), -ENOENT);
	cr_assert_str_eq(err, "limits: unknown key");
}

/* config_load_file. */

Test(config, file_ok)
{
	const char *text = "socket: /run/f.sock\nlimits:\n  max_connections: 3\n";
	char *path = write_temp(text, strlen(text));
	int rc;

	set_defaults(&cfg);
	rc = config_load_file(path, options, NOPTIONS, &cfg, err, sizeof(err));
	cr_assert_eq(rc, 0, "%s", err);
	cr_assert_str_eq(cfg.socket, "/run/f.sock");
	cr_assert_eq(cfg.max_connections, 3);
	cr_assert_eq(cfg.offset, 7);
	remove_temp(path);
}

Test(config, file_error_names_the_path)
{
	const char *text = "offset: 1\nsockt: x\n";
	char *path = write_temp(text, strlen(text));
	char expected[512];
	int rc;

	set_defaults(&cfg);
	rc = config_load_file(path, options, NOPTIONS, &cfg, err, sizeof(err));
	cr_assert_eq(rc, -EINVAL);
	snprintf(expected, sizeof(expected), "%s:2: unknown key 'sockt'", path);
	cr_assert_str_eq(err, expected);
	cr_assert_eq(cfg.offset, 7);
	remove_temp(path);
}

Test(config, file_empty)
{
	char *path = write_temp("", 0);

	set_defaults(&cfg);
	cr_assert_eq(config_load_file(path, options, NOPTIONS, &cfg, err, sizeof(err)), 0, "%s",
		     err);
	remove_temp(path);
}

Test(config, file_not_found)
{
	int rc = config_load_file("/nonexistent/ringfly.yaml", options, NOPTIONS, &cfg, err,
				  sizeof(err));

	cr_assert_eq(rc, -ENOENT);
	cr_assert_str_eq(err, "/nonexistent/ringfly.yaml: No such file or directory");
}

Test(config, file_is_a_directory)
{
	int rc = config_load_file("/tmp", options, NOPTIONS, &cfg, err, sizeof(err));

	cr_assert_eq(rc, -EISDIR);
	cr_assert_str_eq(err, "/tmp: Is a directory");
}

Test(config, file_over_limit)
{
	size_t len = 2 * MIB;
	char *text = malloc(len);
	char *path, expected[512];
	int rc;

	cr_assert_not_null(text);
	memset(text, '#', len);
	path = write_temp(text, len);
	free(text);
	set_defaults(&cfg);
	rc = config_load_file(path, options, NOPTIONS, &cfg, err, sizeof(err));
	cr_assert_eq(rc, -EFBIG);
	snprintf(expected, sizeof(expected), "%s: too large (2097152 bytes, at most 1048576)",
		 path);
	cr_assert_str_eq(err, expected);
	remove_temp(path);
}

Test(config, file_at_limit)
{
	size_t len = MIB;
	const char *line = "offset: 5\n";
	char *text = malloc(len), *path;
	int rc;

	cr_assert_not_null(text);
	memset(text, '#', len);
	memcpy(text, line, strlen(line));
	text[len - 1] = '\n';
	path = write_temp(text, len);
	free(text);
	set_defaults(&cfg);
	rc = config_load_file(path, options, NOPTIONS, &cfg, err, sizeof(err));
	cr_assert_eq(rc, 0, "%s", err);
	cr_assert_eq(cfg.offset, 5);
	remove_temp(path);
}

/* config_diff names each key whose value differs, of every type, in the
 * table's order; equal targets differ in none. */
static void load_over(const char *text)
{
	cr_assert_eq(config_load_buffer(NAME, text, strlen(text), options, NOPTIONS, &cfg, err,
					sizeof(err)), 0, "%s", err);
}

Test(config, diff_names_each_changed_key)
{
	struct settings before;
	char keys[256];

	set_defaults(&cfg);
	before = cfg;
	cr_assert_eq(config_diff(options, NOPTIONS, &before, &cfg, keys, sizeof(keys)), 0);
	cr_assert_str_eq(keys, "");

	load_over("socket: /run/other.sock\nsocket_mode: 0600\nverbose: true\nrole: seed\n"
		  "limits:\n  max_message_bytes: 2MiB\nwait: 3\n");
	cr_assert_eq(config_diff(options, NOPTIONS, &before, &cfg, keys, sizeof(keys)), 6);
	cr_assert_str_eq(keys, "socket, socket_mode, verbose, role, limits.max_message_bytes, wait");

	/* The same values again, and a value set to what it was: no change. */
	before = cfg;
	load_over("socket: /run/other.sock\noffset: 7\n");
	cr_assert_eq(config_diff(options, NOPTIONS, &before, &cfg, keys, sizeof(keys)), 0);

	/* A buffer too small still counts them all and ends in a NUL. */
	load_over("offset: 8\nshutdown_timeout: 1s\n");
	cr_assert_eq(config_diff(options, NOPTIONS, &before, &cfg, keys, 10), 2);
	cr_assert_str_eq(keys, "offset, s");
}
