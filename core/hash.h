/* hash: crc32c (ISA-L when present) for pieces, sha256 (OpenSSL) for whole tasks. */
#ifndef RINGFLY_CORE_HASH_H
#define RINGFLY_CORE_HASH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * CRC-32C (Castagnoli, iSCSI, RFC 3720), the usual presentation: initial
 * value all ones, final inversion. hash_crc32c("123456789") == 0xE3069283.
 * hash_crc32c_extend(hash_crc32c(a), b) == hash_crc32c(a || b), so a piece
 * can be checked in chunks; hash_crc32c_extend(0, buf) == hash_crc32c(buf).
 */
uint32_t hash_crc32c(const void *buf, size_t len);
uint32_t hash_crc32c_extend(uint32_t crc, const void *buf, size_t len);
/* The portable table implementation (the fallback, and the tests' oracle). */
uint32_t hash_crc32c_table(uint32_t crc, const void *buf, size_t len);
/* "isa-l" or "table": which one hash_crc32c uses. */
const char *hash_crc32c_impl(void);

#define HASH_SHA256_SIZE 32
#define HASH_SHA256_HEX_SIZE 65 /* 64 hex digits + NUL */

/* Incremental SHA-256 (OpenSSL EVP). Opaque; hash_sha256_new returns NULL on
 * allocation failure. */
struct hash_sha256;
struct hash_sha256 *hash_sha256_new(void);
void hash_sha256_update(struct hash_sha256 *h, const void *buf, size_t len);
/* Writes the digest and resets the state for reuse. */
void hash_sha256_final(struct hash_sha256 *h, uint8_t out[HASH_SHA256_SIZE]);
void hash_sha256_free(struct hash_sha256 *h);
/* One-shot. */
void hash_sha256(const void *buf, size_t len, uint8_t out[HASH_SHA256_SIZE]);

/* Lower-case hex of a digest into out[HASH_SHA256_HEX_SIZE]. */
void hash_hex(const uint8_t digest[HASH_SHA256_SIZE], char out[HASH_SHA256_HEX_SIZE]);
/* Parses 64 hex digits, or "sha256:" + 64 hex digits. Returns 0 or -EINVAL. */
int hash_parse_sha256(const char *text, uint8_t out[HASH_SHA256_SIZE]);

#endif
