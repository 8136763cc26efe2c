/* curl-load: the libcurl functions net/origin.c calls, resolved from a dlopen'ed libcurl. */
#include "net/curl-load.h"

#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

/* Our definitions below have the names curl's macros would rewrite. */
#define CURL_DISABLE_TYPECHECK 1
#include <curl/curl.h>

#define CURL_LOAD_DEFAULT "libcurl.so.4"

/*
 * One pointer per function, filled by curl_global_init. The names in the
 * table are the symbols looked up; a missing one fails the load as a whole,
 * so a half-resolved table is never used.
 */
static struct {
	CURLcode (*global_init)(long);
	CURL *(*easy_init)(void);
	void (*easy_cleanup)(CURL *);
	void (*easy_reset)(CURL *);
	CURLcode (*easy_setopt)(CURL *, CURLoption, ...);
	CURLcode (*easy_getinfo)(CURL *, CURLINFO, ...);
	CURLcode (*easy_pause)(CURL *, int);
	const char *(*easy_strerror)(CURLcode);
	CURLM *(*multi_init)(void);
	CURLMcode (*multi_cleanup)(CURLM *);
	CURLMcode (*multi_setopt)(CURLM *, CURLMoption, ...);
	CURLMcode (*multi_add_handle)(CURLM *, CURL *);
	CURLMcode (*multi_remove_handle)(CURLM *, CURL *);
	CURLMcode (*multi_socket_action)(CURLM *, curl_socket_t, int, int *);
	CURLMcode (*multi_assign)(CURLM *, curl_socket_t, void *);
	CURLMsg *(*multi_info_read)(CURLM *, int *);
	const char *(*multi_strerror)(CURLMcode);
	struct curl_slist *(*slist_append)(struct curl_slist *, const char *);
	void (*slist_free_all)(struct curl_slist *);
} lib;

static const struct {
	void **slot;
	const char *name;
} curl_load_symbols[] = {
	{ (void **)&lib.global_init, "curl_global_init" },
	{ (void **)&lib.easy_init, "curl_easy_init" },
	{ (void **)&lib.easy_cleanup, "curl_easy_cleanup" },
	{ (void **)&lib.easy_reset, "curl_easy_reset" },
	{ (void **)&lib.easy_setopt, "curl_easy_setopt" },
	{ (void **)&lib.easy_getinfo, "curl_easy_getinfo" },
	{ (void **)&lib.easy_pause, "curl_easy_pause" },
	{ (void **)&lib.easy_strerror, "curl_easy_strerror" },
	{ (void **)&lib.multi_init, "curl_multi_init" },
	{ (void **)&lib.multi_cleanup, "curl_multi_cleanup" },
	{ (void **)&lib.multi_setopt, "curl_multi_setopt" },
	{ (void **)&lib.multi_add_handle, "curl_multi_add_handle" },
	{ (void **)&lib.multi_remove_handle, "curl_multi_remove_handle" },
	{ (void **)&lib.multi_socket_action, "curl_multi_socket_action" },
	{ (void **)&lib.multi_assign, "curl_multi_assign" },
	{ (void **)&lib.multi_info_read, "curl_multi_info_read" },
	{ (void **)&lib.multi_strerror, "curl_multi_strerror" },
	{ (void **)&lib.slist_append, "curl_slist_append" },
	{ (void **)&lib.slist_free_all, "curl_slist_free_all" },
};

static char load_error[512];
static int loaded; /* 1: the table is whole */

const char *curl_load_path(void)
{
	const char *path = getenv("RINGFLY_LIBCURL");

	return path && *path ? path : CURL_LOAD_DEFAULT;
}

const char *curl_load_error(void)
{
	return load_error[0] ? load_error : NULL;
}

/* Opens the library and fills the table; 0, or -1 with load_error set. The
 * handle stays open for the life of the process (libcurl keeps global state). */
static int curl_load(void)
{
	const char *path = curl_load_path();
	void *handle;
	size_t i;

	if (loaded)
		return 0;
	handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (!handle) {
		const char *why = dlerror();

		snprintf(load_error, sizeof(load_error), "cannot load %s: %s", path,
			 why ? why : "unknown error");
		return -1;
	}
	for (i = 0; i < sizeof(curl_load_symbols) / sizeof(curl_load_symbols[0]); i++) {
		void *sym = dlsym(handle, curl_load_symbols[i].name);

		if (!sym) {
			snprintf(load_error, sizeof(load_error), "%s has no %s", path,
				 curl_load_symbols[i].name);
			dlclose(handle);
			return -1;
		}
		*curl_load_symbols[i].slot = sym;
	}
	load_error[0] = '\0';
	loaded = 1;
	return 0;
}

CURLcode curl_global_init(long flags)
{
	if (curl_load() < 0)
		return CURLE_FAILED_INIT;
	return lib.global_init(flags);
}

/* The rest: only after a successful curl_global_init (net/origin.c's order).
 * Called before it they fail the way libcurl reports failure. */

CURL *curl_easy_init(void)
{
	return loaded ? lib.easy_init() : NULL;
}

void curl_easy_cleanup(CURL *curl)
{
	if (loaded)
		lib.easy_cleanup(curl);
}

void curl_easy_reset(CURL *curl)
{
	if (loaded)
		lib.easy_reset(curl);
}

/* The option number says the type of the one argument that follows
 * (curl.h: CURLOPTTYPE_*); it is passed on as that type. */
CURLcode curl_easy_setopt(CURL *curl, CURLoption option, ...)
{
	CURLcode rc;
	va_list ap;

	if (!loaded)
		return CURLE_FAILED_INIT;
	va_start(ap, option);
	if (option < CURLOPTTYPE_OBJECTPOINT)
		rc = lib.easy_setopt(curl, option, va_arg(ap, long));
	else if (option < CURLOPTTYPE_FUNCTIONPOINT)
		rc = lib.easy_setopt(curl, option, va_arg(ap, void *));
	else if (option < CURLOPTTYPE_OFF_T)
		rc = lib.easy_setopt(curl, option, va_arg(ap, void (*)(void)));
	else if (option < CURLOPTTYPE_BLOB)
		rc = lib.easy_setopt(curl, option, va_arg(ap, curl_off_t));
	else
		rc = lib.easy_setopt(curl, option, va_arg(ap, void *));
	va_end(ap);
	return rc;
}

/* Every CURLINFO_* takes one pointer (to the result). */
CURLcode curl_easy_getinfo(CURL *curl, CURLINFO info, ...)
{
	CURLcode rc;
	va_list ap;

	if (!loaded)
		return CURLE_FAILED_INIT;
	va_start(ap, info);
	rc = lib.easy_getinfo(curl, info, va_arg(ap, void *));
	va_end(ap);
	return rc;
}

CURLcode curl_easy_pause(CURL *curl, int bitmask)
{
	return loaded ? lib.easy_pause(curl, bitmask) : CURLE_FAILED_INIT;
}

const char *curl_easy_strerror(CURLcode code)
{
	return loaded ? lib.easy_strerror(code) : "libcurl not loaded";
}

CURLM *curl_multi_init(void)
{
	return loaded ? lib.multi_init() : NULL;
}

CURLMcode curl_multi_cleanup(CURLM *multi)
{
	return loaded ? lib.multi_cleanup(multi) : CURLM_BAD_HANDLE;
}

/* As curl_easy_setopt: CURLMOPT_* numbers use the same type bases. */
CURLMcode curl_multi_setopt(CURLM *multi, CURLMoption option, ...)
{
	CURLMcode rc;
	va_list ap;

	if (!loaded)
		return CURLM_BAD_HANDLE;
	va_start(ap, option);
	if (option < CURLOPTTYPE_OBJECTPOINT)
		rc = lib.multi_setopt(multi, option, va_arg(ap, long));
	else if (option < CURLOPTTYPE_FUNCTIONPOINT)
		rc = lib.multi_setopt(multi, option, va_arg(ap, void *));
	else if (option < CURLOPTTYPE_OFF_T)
		rc = lib.multi_setopt(multi, option, va_arg(ap, void (*)(void)));
	else
		rc = lib.multi_setopt(multi, option, va_arg(ap, curl_off_t));
	va_end(ap);
	return rc;
}

CURLMcode curl_multi_add_handle(CURLM *multi, CURL *curl)
{
	return loaded ? lib.multi_add_handle(multi, curl) : CURLM_BAD_HANDLE;
}

CURLMcode curl_multi_remove_handle(CURLM *multi, CURL *curl)
{
	return loaded ? lib.multi_remove_handle(multi, curl) : CURLM_BAD_HANDLE;
}

CURLMcode curl_multi_socket_action(CURLM *multi, curl_socket_t s, int ev_bitmask,
				   int *running_handles)
{
	return loaded ? lib.multi_socket_action(multi, s, ev_bitmask, running_handles) :
			CURLM_BAD_HANDLE;
}

CURLMcode curl_multi_assign(CURLM *multi, curl_socket_t sockfd, void *sockp)
{
	return loaded ? lib.multi_assign(multi, sockfd, sockp) : CURLM_BAD_HANDLE;
}

CURLMsg *curl_multi_info_read(CURLM *multi, int *msgs_in_queue)
{
	if (!loaded) {
		*msgs_in_queue = 0;
		return NULL;
	}
	return lib.multi_info_read(multi, msgs_in_queue);
}

const char *curl_multi_strerror(CURLMcode code)
{
	return loaded ? lib.multi_strerror(code) : "libcurl not loaded";
}

struct curl_slist *curl_slist_append(struct curl_slist *list, const char *data)
{
	return loaded ? lib.slist_append(list, data) : NULL;
}

void curl_slist_free_all(struct curl_slist *list)
{
	if (loaded)
		lib.slist_free_all(list);
}
