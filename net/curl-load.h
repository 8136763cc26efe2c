/* curl-load: libcurl loaded on first use, not linked. */
#ifndef RINGFLY_NET_CURL_LOAD_H
#define RINGFLY_NET_CURL_LOAD_H

/*
 * libcurl and the thirty libraries it pulls in (GnuTLS, Kerberos, LDAP, SSH,
 * ...) cost every exec about 5 ms of dynamic linking and 4-5 MiB of RSS,
 * whether or not the process ever fetches from an origin. ringflyd must be
 * back within milliseconds of a kill -9, and a peer-only node never goes to
 * the source. So no binary links libcurl: net/curl-load.c defines the
 * libcurl functions net/origin.c calls, and its curl_global_init opens the
 * library (dlopen) and resolves them. Until then the others must not be
 * called (they fail safe: an error code or NULL).
 *
 * The library is `libcurl.so.4` (Debian's libcurl4, the ABI the build's
 * headers come from), or the path in the environment variable RINGFLY_LIBCURL.
 */

/* Why the last curl_global_init failed to load the library (dlopen's or
 * dlsym's text, naming the file or symbol), or NULL if it did not fail. */
const char *curl_load_error(void);

/* The file curl_global_init loads. */
const char *curl_load_path(void);

#endif
