/* config: a table-driven YAML (libyaml) reader that fills a caller's struct. */
#ifndef RINGFLY_CORE_CONFIG_H
#define RINGFLY_CORE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdint.h>

/*
 * A program describes its settings with a table of config_option; the reader
 * walks a YAML document, maps each scalar to the option of the same key and
 * stores it at `offset` in the caller's struct.
 *
 * The document must be a mapping. Nested mappings name keys with dots:
 *
 *     limits:
 *       max_connections: 64      -> key "limits.max_connections"
 *
 * An unknown key, a value of the wrong type, a value out of [min, max], a
 * sequence, an alias, a duplicate key or a string too long for its field is an
 * error naming the file, the line and the key:
 *
 *     /etc/ringfly/ringflyd.yaml:7: unknown key 'max_conections'
 *     /etc/ringfly/ringflyd.yaml:3: key 'max_connections' expects an integer, got 'lots'
 *
 * A file that is empty or holds only comments is an empty config (not an
 * error).
 */

enum config_type {
	CONFIG_STRING,	 /* char[size] at offset; value copied, NUL-terminated */
	CONFIG_INT,	 /* int64_t at offset; decimal, optional sign; [min, max] */
	CONFIG_BOOL,	 /* bool at offset; true/false/yes/no/on/off */
	CONFIG_MODE,	 /* uint32_t at offset; octal file mode such as 0660, <= 07777 */
	CONFIG_BYTES,	 /* int64_t at offset; integer with optional K/M/G/KiB/MiB/GiB
			    suffix (powers of 1024); [min, max] */
	CONFIG_DURATION, /* int64_t milliseconds at offset; integer with ms/s/m/h
			    suffix, bare integer = milliseconds; [min, max] in ms */
	CONFIG_SECONDS,	 /* as CONFIG_DURATION, but a bare integer is seconds: the
			    CLI's flags (`ringfly get --timeout 30`) */
	CONFIG_CHOICE,	 /* char[size] at offset; value must be one of `choices` */
};

struct config_option {
	const char *key;	    /* dotted path, e.g. "limits.max_connections" */
	enum config_type type;
	size_t offset;		    /* offsetof(struct target, field) */
	size_t size;		    /* CONFIG_STRING/CHOICE: sizeof the char array */
	int64_t min, max;	    /* CONFIG_INT/BYTES/DURATION: accepted range */
	const char *const *choices; /* CONFIG_CHOICE: NULL-terminated list */
};

/*
 * Reads the YAML file at `path` into `target` using the `count` options of
 * `options`. Keys absent from the file leave their field untouched (set
 * defaults before the call).
 * Returns 0, or a negative errno with a one-line reason in err[err_size]
 * (which always names `path`, and the line and key when there is one):
 * -ENOENT/-EACCES/... when the file cannot be read, -EINVAL for any content
 * error.
 */
int config_load_file(const char *path, const struct config_option *options,
		     size_t count, void *target, char *err, size_t err_size);

/*
 * Same as config_load_file, from a buffer; `name` stands for the file name in
 * errors. Used by tests and by config_load_file itself.
 */
int config_load_buffer(const char *name, const char *text, size_t text_len,
		       const struct config_option *options, size_t count,
		       void *target, char *err, size_t err_size);

/*
 * Sets one option from a string, as a command-line flag does: the same parsing
 * and checks as a YAML scalar. Errors read "KEY: reason" (e.g.
 * "socket_mode: expects an octal mode such as 0660, got '999'").
 * Returns 0, -ENOENT for an unknown key, -EINVAL for a bad value.
 */
int config_set(const struct config_option *options, size_t count, void *target,
	       const char *key, const char *value, char *err, size_t err_size);

/*
 * The keys of `options` whose values differ between `a` and `b` (two targets
 * of the same table), written as "key1, key2" into keys[keys_size] (cut short
 * if it does not fit). Returns how many differ.
 */
size_t config_diff(const struct config_option *options, size_t count, const void *a,
		   const void *b, char *keys, size_t keys_size);

/* A command-line flag that sets a config key: `--flag VALUE`, or with
 * `no_value` just `--flag`, which sets the key to "true". */
struct config_flag {
	const char *flag;
	const char *key;
	bool no_value;
};

/* A program's command line: its flags, --config FILE, --help, --version. */
struct config_command_line {
	const char *program;			/* "ringflyd", for messages */
	const char *version;
	void (*usage)(FILE *out);
	const struct config_flag *flags;
	size_t flag_count;
	/* Loads a file / sets a key over the config (defaults already in). */
	int (*load)(void *config, const char *path, char *err, size_t err_size);
	int (*set)(void *config, const char *key, const char *value, char *err,
		   size_t err_size);
};

/*
 * Parses argv in two passes: flag syntax, --help (usage on stdout, exit 0),
 * --version and --config FILE first; then the file over the defaults already
 * in `config`, then the flags over the file (precedence: defaults < file <
 * flags). Errors go to stderr as "PROGRAM: reason" (the load's reason, or
 * "--flag: reason"). Returns -1 to go on (*config_path is the --config FILE
 * or NULL), or the exit code to exit with (0 or 2).
 */
int config_command_line(const struct config_command_line *cl, void *config, int argc,
			char **argv, const char **config_path);

#endif
