/* hash: crc32c for pieces (ISA-L, or a slicing-by-8 table), sha256 (OpenSSL) for tasks. */
#include "core/hash.h"

#include <assert.h>
#include <endian.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#ifdef RINGFLY_HAVE_ISAL
#include <isa-l/crc.h>
#endif

/* --- crc32c */

#define HASH_CRC32C_POLY 0x82F63B78u /* Castagnoli, bit-reflected */

/*
 * ISA-L takes an int length: longer buffers go in chunks of this size (a
 * multiple of 64, so every chunk but the last stays on its fast path).
 */
#define HASH_ISAL_CHUNK (1u << 30)
_Static_assert(HASH_ISAL_CHUNK <= INT_MAX, "chunk fits crc32_iscsi's int length");

/* Slicing-by-8: table[0] is the byte-at-a-time table; table[k][b] is the crc
 * of byte b followed by k zero bytes. Built once, on first use. */
static uint32_t hash_crc32c_tables[8][256];
static pthread_once_t hash_crc32c_once = PTHREAD_ONCE_INIT;

static void hash_crc32c_build_tables(void)
{
	for (unsigned b = 0; b < 256; b++) {
		uint32_t crc = b;

		for (int bit = 0; bit < 8; bit++)
			crc = (crc >> 1) ^ (HASH_CRC32C_POLY & -(crc & 1u));
		hash_crc32c_tables[0][b] = crc;
	}
	for (unsigned b = 0; b < 256; b++) {
		uint32_t crc = hash_crc32c_tables[0][b];

		for (int k = 1; k < 8; k++) {
			crc = (crc >> 8) ^ hash_crc32c_tables[0][crc & 0xff];
			hash_crc32c_tables[k][b] = crc;
		}
	}
}

static uint32_t hash_load_le32(const uint8_t *p)
{
	uint32_t v;

	memcpy(&v, p, sizeof(v));
	return le32toh(v);
}

/*
 * `crc` is a finished crc32c (0 for nothing hashed yet): invert it back into
 * the shift register, run the bytes through, invert on the way out.
 */
uint32_t hash_crc32c_table(uint32_t crc, const void *buf, size_t len)
{
	const uint32_t(*t)[256] = (const uint32_t(*)[256])hash_crc32c_tables;
	const uint8_t *p = buf;
	uint32_t reg = ~crc;

	assert(buf != NULL || len == 0);
	pthread_once(&hash_crc32c_once, hash_crc32c_build_tables);

	/* Bytes up to an 8-byte boundary, then 8 at a time, then the tail. */
	while (len > 0 && ((uintptr_t)p & 7) != 0) {
		reg = (reg >> 8) ^ t[0][(reg ^ *p++) & 0xff];
		len--;
	}
	while (len >= 8) {
		uint32_t lo = reg ^ hash_load_le32(p);
		uint32_t hi = hash_load_le32(p + 4);

		reg = t[7][lo & 0xff] ^ t[6][(lo >> 8) & 0xff] ^ t[5][(lo >> 16) & 0xff] ^
		      t[4][lo >> 24] ^ t[3][hi & 0xff] ^ t[2][(hi >> 8) & 0xff] ^
		      t[1][(hi >> 16) & 0xff] ^ t[0][hi >> 24];
		p += 8;
		len -= 8;
	}
	while (len > 0) {
		reg = (reg >> 8) ^ t[0][(reg ^ *p++) & 0xff];
		len--;
	}
	return ~reg;
}

#ifdef RINGFLY_HAVE_ISAL
/*
 * crc32_iscsi() neither inverts its initial value nor its result: `init` is
 * the raw shift register and the raw register comes back (measured:
 * crc32_iscsi("123456789", 9, 0xffffffff) == ~0xE3069283). So the finished
 * crc is inverted on the way in and out, as in the table version.
 */
static uint32_t hash_crc32c_isal(uint32_t crc, const void *buf, size_t len)
{
	unsigned char *p = (unsigned char *)buf; /* ISA-L only reads it */
	unsigned int reg = ~crc;

	assert(buf != NULL || len == 0);
	while (len > 0) {
		size_t n = len < HASH_ISAL_CHUNK ? len : HASH_ISAL_CHUNK;

		reg = crc32_iscsi(p, (int)n, reg);
		p += n;
		len -= n;
	}
	return ~reg;
}
#endif

uint32_t hash_crc32c_extend(uint32_t crc, const void *buf, size_t len)
{
#ifdef RINGFLY_HAVE_ISAL
	return hash_crc32c_isal(crc, buf, len);
#else
	return hash_crc32c_table(crc, buf, len);
#endif
}

uint32_t hash_crc32c(const void *buf, size_t len)
{
	return hash_crc32c_extend(0, buf, len);
}

const char *hash_crc32c_impl(void)
{
#ifdef RINGFLY_HAVE_ISAL
	return "isa-l";
#else
	return "table";
#endif
}

/* --- sha256 */

struct hash_sha256 {
	EVP_MD_CTX *ctx;
};

/*
 * The sha256 calls return nothing: OpenSSL failing on an initialised
 * SHA-256 context (no allocation left to fail) means a broken library, and
 * a wrong digest must never be reported as a right one. Stop here.
 */
static void hash_openssl_check(int ok, const char *what)
{
	if (ok == 1)
		return;
	fprintf(stderr, "ringfly: hash: %s failed for sha256\n", what);
	abort();
}

struct hash_sha256 *hash_sha256_new(void)
{
	struct hash_sha256 *h = malloc(sizeof(*h));

	if (!h)
		return NULL;
	h->ctx = EVP_MD_CTX_new();
	if (!h->ctx || EVP_DigestInit_ex(h->ctx, EVP_sha256(), NULL) != 1) {
		EVP_MD_CTX_free(h->ctx);
		free(h);
		return NULL;
	}
	return h;
}

void hash_sha256_update(struct hash_sha256 *h, const void *buf, size_t len)
{
	assert(h && h->ctx);
	assert(buf != NULL || len == 0);
	if (len == 0)
		return;
	hash_openssl_check(EVP_DigestUpdate(h->ctx, buf, len), "EVP_DigestUpdate");
}

void hash_sha256_final(struct hash_sha256 *h, uint8_t out[HASH_SHA256_SIZE])
{
	unsigned int n = 0;

	assert(h && h->ctx);
	hash_openssl_check(EVP_DigestFinal_ex(h->ctx, out, &n), "EVP_DigestFinal_ex");
	assert(n == HASH_SHA256_SIZE);
	hash_openssl_check(EVP_DigestInit_ex(h->ctx, EVP_sha256(), NULL), "EVP_DigestInit_ex");
}

void hash_sha256_free(struct hash_sha256 *h)
{
	if (!h)
		return;
	EVP_MD_CTX_free(h->ctx);
	free(h);
}

void hash_sha256(const void *buf, size_t len, uint8_t out[HASH_SHA256_SIZE])
{
	static const uint8_t empty;
	unsigned int n = 0;

	assert(buf != NULL || len == 0);
	if (len == 0)
		buf = &empty;
	hash_openssl_check(EVP_Digest(buf, len, out, &n, EVP_sha256(), NULL), "EVP_Digest");
	assert(n == HASH_SHA256_SIZE);
}

/* --- hex */

#define HASH_SHA256_PREFIX "sha256:"

void hash_hex(const uint8_t digest[HASH_SHA256_SIZE], char out[HASH_SHA256_HEX_SIZE])
{
	static const char digits[] = "0123456789abcdef";

	for (size_t i = 0; i < HASH_SHA256_SIZE; i++) {
		out[2 * i] = digits[digest[i] >> 4];
		out[2 * i + 1] = digits[digest[i] & 0xf];
	}
	out[2 * HASH_SHA256_SIZE] = '\0';
}

static int hash_hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* `out` is written only on success. */
int hash_parse_sha256(const char *text, uint8_t out[HASH_SHA256_SIZE])
{
	uint8_t digest[HASH_SHA256_SIZE];

	if (!text)
		return -EINVAL;
	if (strncmp(text, HASH_SHA256_PREFIX, strlen(HASH_SHA256_PREFIX)) == 0)
		text += strlen(HASH_SHA256_PREFIX);
	/* Digit by digit: stops at the first bad character or the NUL. */
	for (size_t i = 0; i < HASH_SHA256_SIZE; i++) {
		int hi = hash_hex_digit(text[2 * i]);
		int lo = hi < 0 ? -1 : hash_hex_digit(text[2 * i + 1]);

		if (lo < 0)
			return -EINVAL;
		digest[i] = (uint8_t)(hi << 4 | lo);
	}
	if (text[2 * HASH_SHA256_SIZE] != '\0')
		return -EINVAL;
	memcpy(out, digest, sizeof(digest));
	return 0;
}
