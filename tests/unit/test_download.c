/* test_download: which URLs are registry blobs, and the task ids they get. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "core/hash.h"
#include "daemon/download.h"

#define HEX "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

static bool blob(const char *url, char hex[65])
{
	uint8_t digest[32];

	if (!download_blob_digest(url, digest))
		return false;
	hash_hex(digest, hex);
	return true;
}

Test(download, registry_blob_urls)
{
	char hex[65];

	cr_assert(blob("http://r:5000/v2/a/blobs/sha256:" HEX, hex));
	cr_assert_str_eq(hex, HEX);
	cr_assert(blob("https://r/v2/org/team/app/blobs/sha256:" HEX "?ns=docker.io", hex));
	cr_assert_str_eq(hex, HEX);
	cr_assert(blob("https://r/v2/a/blobs/sha256:" HEX "#frag", hex));
}

Test(download, not_registry_blob_urls)
{
	char hex[65];
	char upper[] = HEX;

	upper[10] = 'A';
	cr_assert_not(blob("http://r/v2/a/blobs/sha256:" HEX "0", hex), "65 hex digits");
	cr_assert_not(blob("http://r/v2/a/blobs/sha256:" HEX "/x", hex), "something after");
	cr_assert_not(blob("http://r/v2/a/blobs/sha256:0123", hex), "short");
	cr_assert_not(blob("http://r/v2/blobs/sha256:" HEX, hex), "no repository name");
	cr_assert_not(blob("http://r/v1/a/blobs/sha256:" HEX, hex), "not /v2/");
	cr_assert_not(blob("http://r/files/a/blobs/sha256:" HEX, hex), "not under /v2/");
	cr_assert_not(blob("http://r/v2/a/blobs/sha512:" HEX HEX, hex), "another algorithm");
	cr_assert_not(blob("http://r/v2/a/manifests/sha256:" HEX, hex), "a manifest");
	cr_assert_not(blob("http://r?x=/v2/a/blobs/sha256:" HEX, hex), "in the query only");
	cr_assert_not(blob("no-scheme/v2/a/blobs/sha256:" HEX, hex), "no scheme");
	{
		char url[200];

		snprintf(url, sizeof(url), "http://r/v2/a/blobs/sha256:%s", upper);
		cr_assert_not(blob(url, hex), "upper-case hex");
	}
}

Test(download, task_ids)
{
	uint8_t id[32], want[32], digest[32];
	const char *text = "ringfly-blob-v1\nsha256:" HEX;

	/* A blob is its digest, whatever URL names it. */
	hash_sha256(text, strlen(text), want);
	download_task_id("http://a/v2/x/blobs/sha256:" HEX, id);
	cr_assert_arr_eq(id, want, 32);
	download_task_id("https://b:443/v2/other/name/blobs/sha256:" HEX "?ns=a", id);
	cr_assert_arr_eq(id, want, 32);
	cr_assert_eq(hash_parse_sha256(HEX, digest), 0);
	download_blob_task_id(digest, id);
	cr_assert_arr_eq(id, want, 32);

	/* Anything else: the URL without its fragment. */
	text = "ringfly-task-v1\nhttp://a/file?x=1";
	hash_sha256(text, strlen(text), want);
	download_task_id("http://a/file?x=1#frag", id);
	cr_assert_arr_eq(id, want, 32);
}

/* Which origins a seed fetches from when a peer or a preheat asks. */
Test(download, a_seed_fetches_only_from_allowed_non_link_local_origins)
{
	char why[256];

	cr_assert(download_seed_may_fetch("http://registry:5000/v2/x", "*", why, sizeof(why)));
	cr_assert(download_seed_may_fetch("https://127.0.0.1:8443/f", "*", why, sizeof(why)));
	cr_assert(download_seed_may_fetch("http://[::1]:80/f", "*", why, sizeof(why)));
	/* Link-local (cloud metadata services): never, whatever the list. */
	cr_assert_not(download_seed_may_fetch("http://169.254.169.254/latest/meta-data/", "*", why,
					      sizeof(why)));
	cr_assert_str_eq(why, "169.254.169.254 is a link-local address");
	cr_assert_not(download_seed_may_fetch("http://u:p@169.254.1.2:8080/x", "*", why,
					      sizeof(why)));
	cr_assert_not(download_seed_may_fetch("http://[fe80::1]:80/x", "*", why, sizeof(why)));
	cr_assert_str_eq(why, "fe80::1 is a link-local address");
	cr_assert(download_seed_may_fetch("http://169.255.0.1/x", "*", why, sizeof(why)));
	/* A list: the host, or host:port; case does not matter. */
	cr_assert(download_seed_may_fetch("http://Registry.Example:5000/v2/x",
					  "a.example, registry.example", why, sizeof(why)));
	cr_assert(download_seed_may_fetch("http://registry.example:5000/v2/x",
					  "registry.example:5000", why, sizeof(why)));
	cr_assert_not(download_seed_may_fetch("http://registry.example:6000/v2/x",
					      "registry.example:5000", why, sizeof(why)));
	cr_assert_str_eq(why, "registry.example:6000 is not in seed.fetch_from");
	cr_assert_not(download_seed_may_fetch("http://evil.example/x", "registry.example", why,
					      sizeof(why)));
	cr_assert_not(download_seed_may_fetch("no-scheme", "*", why, sizeof(why)));
	cr_assert_not(download_seed_may_fetch("http:///path", "*", why, sizeof(why)));
}
