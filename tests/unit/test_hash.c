/* test_hash: crc32c (known vectors, ISA-L against the table, chunking), sha256 and hex. */
#include <criterion/criterion.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "core/hash.h"

/* Deterministic pseudo-random bytes (splitmix64): failures reproduce. */
static uint64_t rng_state = 0x5eed5eed12345678ull;

static uint64_t rng_next(void)
{
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static void rng_fill(uint8_t *buf, size_t len)
{
	for (size_t i = 0; i < len; i++)
		buf[i] = (uint8_t)rng_next();
}

/* Bit at a time, straight from the definition: the oracle's oracle. */
static uint32_t crc32c_bitwise(uint32_t crc, const uint8_t *p, size_t len)
{
	crc = ~crc;
	while (len--) {
		crc ^= *p++;
		for (int bit = 0; bit < 8; bit++)
			crc = (crc >> 1) ^ (0x82F63B78u & -(crc & 1u));
	}
	return ~crc;
}

/* Checks all three implementations of one crc. */
static void expect_crc(const void *buf, size_t len, uint32_t want)
{
	cr_expect_eq(hash_crc32c(buf, len), want, "hash_crc32c len=%zu: %08x, want %08x", len,
		     hash_crc32c(buf, len), want);
	cr_expect_eq(hash_crc32c_table(0, buf, len), want, "table len=%zu", len);
	cr_expect_eq(crc32c_bitwise(0, buf, len), want, "bitwise len=%zu", len);
}

/* The define may be private to the library: without it, either is right. */
Test(crc32c, impl_name)
{
	const char *impl = hash_crc32c_impl();

#ifdef RINGFLY_HAVE_ISAL
	cr_assert_str_eq(impl, "isa-l");
#else
	cr_assert(strcmp(impl, "isa-l") == 0 || strcmp(impl, "table") == 0, "impl %s", impl);
#endif
}

Test(crc32c, check_value)
{
	expect_crc("123456789", 9, 0xE3069283u);
	expect_crc("a", 1, 0xC1D04330u);
	expect_crc("", 0, 0);
	cr_expect_eq(hash_crc32c(NULL, 0), 0);
	cr_expect_eq(hash_crc32c_extend(0x12345678u, NULL, 0), 0x12345678u);
	cr_expect_eq(hash_crc32c_table(0x12345678u, NULL, 0), 0x12345678u);
}

/* RFC 3720, appendix B.4. */
Test(crc32c, rfc3720_zeros)
{
	uint8_t buf[32];

	memset(buf, 0x00, sizeof(buf));
	expect_crc(buf, sizeof(buf), 0x8A9136AAu);
}

Test(crc32c, rfc3720_ones)
{
	uint8_t buf[32];

	memset(buf, 0xff, sizeof(buf));
	expect_crc(buf, sizeof(buf), 0x62A8AB43u);
}

Test(crc32c, rfc3720_incrementing)
{
	uint8_t buf[32];

	for (int i = 0; i < 32; i++)
		buf[i] = (uint8_t)i;
	expect_crc(buf, sizeof(buf), 0x46DD794Eu);
}

Test(crc32c, rfc3720_decrementing)
{
	uint8_t buf[32];

	for (int i = 0; i < 32; i++)
		buf[i] = (uint8_t)(31 - i);
	expect_crc(buf, sizeof(buf), 0x113FDB5Cu);
}

Test(crc32c, rfc3720_iscsi_read_pdu)
{
	static const uint8_t pdu[48] = {
		0x01, 0xc0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
		0x00, 0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00,
		0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x18, 0x28, 0x00, 0x00, 0x00,
		0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	};

	expect_crc(pdu, sizeof(pdu), 0xD9963A56u);
}

/* Every length to a few KiB at every alignment in 16, then larger ones. */
Test(crc32c, random_lengths_and_alignments)
{
	enum { MAX_LEN = 4200, ALIGN = 16 };
	uint8_t *buf = malloc(MAX_LEN + ALIGN);

	cr_assert_not_null(buf);
	rng_fill(buf, MAX_LEN + ALIGN);
	for (size_t len = 0; len <= MAX_LEN; len += len < 300 ? 1 : 37) {
		for (size_t align = 0; align < ALIGN; align++) {
			const uint8_t *p = buf + align;
			uint32_t want = hash_crc32c_table(0, p, len);

			cr_assert_eq(hash_crc32c(p, len), want, "len=%zu align=%zu", len, align);
			if (len < 300 || align % 5 == 0)
				cr_assert_eq(crc32c_bitwise(0, p, len), want, "len=%zu align=%zu",
					     len, align);
		}
	}
	free(buf);
}

Test(crc32c, large_random_buffers)
{
	static const size_t lengths[] = { 65535, 65536, 65537, 1 << 20, (4 << 20) + 13 };
	uint8_t *buf = malloc((4 << 20) + 64);

	cr_assert_not_null(buf);
	rng_fill(buf, (4 << 20) + 64);
	for (size_t i = 0; i < sizeof(lengths) / sizeof(lengths[0]); i++) {
		for (size_t align = 0; align < 8; align += 3) {
			const uint8_t *p = buf + align;
			uint32_t want = hash_crc32c_table(0, p, lengths[i]);

			cr_assert_eq(hash_crc32c(p, lengths[i]), want, "len=%zu align=%zu",
				     lengths[i], align);
		}
	}
	cr_assert_eq(hash_crc32c_table(0, buf, 1 << 20), crc32c_bitwise(0, buf, 1 << 20));
	free(buf);
}

Test(crc32c, extend_composes)
{
	enum { LEN = 70000 };
	uint8_t *buf = malloc(LEN);

	cr_assert_not_null(buf);
	rng_fill(buf, LEN);
	for (int round = 0; round < 500; round++) {
		size_t len = round < 250 ? rng_next() % 600 : rng_next() % (LEN + 1);
		size_t split = len ? rng_next() % (len + 1) : 0;
		uint32_t whole = hash_crc32c(buf, len);
		uint32_t head = hash_crc32c(buf, split);

		cr_assert_eq(hash_crc32c_extend(head, buf + split, len - split), whole,
			     "len=%zu split=%zu", len, split);
		cr_assert_eq(hash_crc32c_table(head, buf + split, len - split), whole,
			     "table len=%zu split=%zu", len, split);
		cr_assert_eq(hash_crc32c_extend(0, buf, len), whole);
	}
	free(buf);
}

Test(crc32c, extend_in_many_chunks)
{
	enum { LEN = 100000 };
	uint8_t *buf = malloc(LEN);

	cr_assert_not_null(buf);
	rng_fill(buf, LEN);
	for (int round = 0; round < 20; round++) {
		uint32_t crc = 0, table = 0;
		size_t off = 0;

		while (off < LEN) {
			size_t n = rng_next() % (round < 10 ? 17 : 9000);

			if (n > LEN - off)
				n = LEN - off;
			crc = hash_crc32c_extend(crc, buf + off, n);
			table = hash_crc32c_table(table, buf + off, n);
			off += n;
		}
		cr_assert_eq(crc, hash_crc32c(buf, LEN));
		cr_assert_eq(table, crc);
	}
	free(buf);
}

/*
 * Shifting n zero bytes through the crc register is a linear map, M^n:
 * squaring M (as zlib's crc32_combine does) gives it in O(log n), an oracle
 * for mostly-zero buffers of any length that shares no code with hash.c.
 */
static uint32_t gf2_times(const uint32_t mat[32], uint32_t vec)
{
	uint32_t sum = 0;

	for (int i = 0; vec; vec >>= 1, i++)
		if (vec & 1)
			sum ^= mat[i];
	return sum;
}

static void gf2_square(uint32_t out[32], const uint32_t mat[32])
{
	for (int i = 0; i < 32; i++)
		out[i] = gf2_times(mat, mat[i]);
}

/* The raw register after `n` zero bytes. */
static uint32_t crc32c_reg_zeros(uint32_t reg, uint64_t n)
{
	uint32_t odd[32], even[32];

	odd[0] = 0x82F63B78u; /* one zero bit */
	for (int i = 1; i < 32; i++)
		odd[i] = 1u << (i - 1);
	gf2_square(even, odd); /* two bits */
	gf2_square(odd, even); /* four bits */
	while (n) {
		gf2_square(even, odd); /* 1, 4, 16... bytes */
		if (n & 1)
			reg = gf2_times(even, reg);
		n >>= 1;
		if (!n)
			break;
		gf2_square(odd, even); /* 2, 8, 32... bytes */
		if (n & 1)
			reg = gf2_times(odd, reg);
		n >>= 1;
	}
	return reg;
}

/* crc32c of `len` bytes that are zero except buf[at[i]], at[] ascending. */
static uint32_t crc32c_sparse(const uint8_t *buf, size_t len, const size_t *at, size_t count)
{
	uint32_t reg = ~0u;
	size_t pos = 0;

	for (size_t i = 0; i < count; i++) {
		reg = crc32c_reg_zeros(reg, at[i] - pos);
		reg = ~crc32c_bitwise(~reg, buf + at[i], 1);
		pos = at[i] + 1;
	}
	return ~crc32c_reg_zeros(reg, len - pos);
}

Test(crc32c, zero_run_oracle)
{
	static uint8_t buf[5000];
	size_t at[] = { 0, 7, 8, 1000, 4095, 4999 };

	for (size_t n = 0; n < 300; n++)
		cr_assert_eq(crc32c_sparse(buf, n, NULL, 0), crc32c_bitwise(0, buf, n), "n=%zu", n);
	cr_assert_eq(crc32c_sparse(buf, 32, NULL, 0), 0x8A9136AAu);
	for (size_t i = 0; i < sizeof(at) / sizeof(at[0]); i++)
		buf[at[i]] = (uint8_t)(0x31 * (i + 1));
	cr_assert_eq(crc32c_sparse(buf, sizeof(buf), at, 6), crc32c_bitwise(0, buf, sizeof(buf)));
}

/*
 * More than INT_MAX bytes: ISA-L takes an int length, so hash_crc32c must
 * chunk. A mostly untouched anonymous mapping reads as zeros without using
 * memory; a few bytes are set on each side of the 1 GiB and 2 GiB marks.
 */
Test(crc32c, longer_than_int_max, .timeout = 100)
{
	const size_t gib = (size_t)1 << 30;
	const size_t len = (size_t)INT_MAX + 1 + 4096 * 3 + 5;
	const size_t at[] = {
		0, gib - 1, gib, (size_t)INT_MAX - 1, (size_t)INT_MAX, (size_t)INT_MAX + 1, len - 1
	};
	const size_t count = sizeof(at) / sizeof(at[0]);
	uint8_t *buf = mmap(NULL, len, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

	if (buf == MAP_FAILED)
		cr_skip_test("cannot map %zu bytes", len);
	for (size_t i = 0; i < count; i++)
		buf[at[i]] = (uint8_t)(0x11 * (i + 1));

	uint32_t want = crc32c_sparse(buf, len, at, count);
	uint32_t whole = hash_crc32c(buf, len);

	cr_expect_eq(whole, want, "%08x, want %08x", whole, want);
	if (strcmp(hash_crc32c_impl(), "isa-l") == 0) {
		/* In pieces split off the chunk boundaries, one still over INT_MAX. */
		uint32_t crc = hash_crc32c(buf, 12345);

		crc = hash_crc32c_extend(crc, buf + 12345, len - 12345 - 7);
		crc = hash_crc32c_extend(crc, buf + len - 7, 7);
		cr_expect_eq(crc, want);
	}
	munmap(buf, len);
}

/* --- sha256 */

static void expect_digest_hex(const uint8_t digest[HASH_SHA256_SIZE], const char *want)
{
	char hex[HASH_SHA256_HEX_SIZE];

	hash_hex(digest, hex);
	cr_expect_str_eq(hex, want);
}

#define SHA256_EMPTY	 "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
#define SHA256_ABC	 "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
#define SHA256_448	 "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
#define SHA256_ABC_MIXED "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015aD"
#define SHA256_MILLION_A "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"

Test(sha256, known_answers)
{
	const char *s448 = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
	uint8_t digest[HASH_SHA256_SIZE];

	hash_sha256("", 0, digest);
	expect_digest_hex(digest, SHA256_EMPTY);
	hash_sha256(NULL, 0, digest);
	expect_digest_hex(digest, SHA256_EMPTY);
	hash_sha256("abc", 3, digest);
	expect_digest_hex(digest, SHA256_ABC);
	hash_sha256(s448, strlen(s448), digest);
	expect_digest_hex(digest, SHA256_448);
}

Test(sha256, incremental_known_answers)
{
	struct hash_sha256 *h = hash_sha256_new();
	uint8_t digest[HASH_SHA256_SIZE];
	char a[1000];

	cr_assert_not_null(h);
	hash_sha256_final(h, digest);
	expect_digest_hex(digest, SHA256_EMPTY);

	hash_sha256_update(h, "a", 1);
	hash_sha256_update(h, NULL, 0);
	hash_sha256_update(h, "bc", 2);
	hash_sha256_final(h, digest);
	expect_digest_hex(digest, SHA256_ABC);

	/* final reset the state: one million 'a' in 1000-byte updates. */
	memset(a, 'a', sizeof(a));
	for (int i = 0; i < 1000; i++)
		hash_sha256_update(h, a, sizeof(a));
	hash_sha256_final(h, digest);
	expect_digest_hex(digest, SHA256_MILLION_A);
	hash_sha256_free(h);
	hash_sha256_free(NULL);
}

Test(sha256, one_mib_incremental_equals_one_shot)
{
	enum { LEN = 1 << 20 };
	uint8_t *buf = malloc(LEN);
	uint8_t want[HASH_SHA256_SIZE], got[HASH_SHA256_SIZE];
	struct hash_sha256 *h = hash_sha256_new();

	cr_assert_not_null(buf);
	cr_assert_not_null(h);
	rng_fill(buf, LEN);
	hash_sha256(buf, LEN, want);
	for (int round = 0; round < 8; round++) {
		size_t off = 0;

		while (off < LEN) {
			size_t n = rng_next() % (round < 4 ? 200 : 100000);

			if (n > LEN - off)
				n = LEN - off;
			hash_sha256_update(h, buf + off, n);
			off += n;
		}
		hash_sha256_final(h, got);
		cr_assert_arr_eq(got, want, HASH_SHA256_SIZE, "round %d", round);
	}
	/* One byte changed changes the digest. */
	buf[LEN / 2] ^= 1;
	hash_sha256(buf, LEN, got);
	cr_assert_arr_neq(got, want, HASH_SHA256_SIZE);
	hash_sha256_free(h);
	free(buf);
}

/* --- hex */

Test(hex, round_trip)
{
	uint8_t digest[HASH_SHA256_SIZE], parsed[HASH_SHA256_SIZE];
	char hex[HASH_SHA256_HEX_SIZE], prefixed[8 + HASH_SHA256_HEX_SIZE];

	for (int round = 0; round < 100; round++) {
		rng_fill(digest, sizeof(digest));
		hash_hex(digest, hex);
		cr_assert_eq(strlen(hex), 64);
		cr_assert_eq(strspn(hex, "0123456789abcdef"), 64, "lower case: %s", hex);

		memset(parsed, 0, sizeof(parsed));
		cr_assert_eq(hash_parse_sha256(hex, parsed), 0);
		cr_assert_arr_eq(parsed, digest, sizeof(digest));

		snprintf(prefixed, sizeof(prefixed), "sha256:%s", hex);
		memset(parsed, 0, sizeof(parsed));
		cr_assert_eq(hash_parse_sha256(prefixed, parsed), 0);
		cr_assert_arr_eq(parsed, digest, sizeof(digest));

		for (size_t i = 0; i < 64; i++)
			hex[i] = (char)toupper((unsigned char)hex[i]);
		memset(parsed, 0, sizeof(parsed));
		cr_assert_eq(hash_parse_sha256(hex, parsed), 0);
		cr_assert_arr_eq(parsed, digest, sizeof(digest));
	}
}

Test(hex, known_digest)
{
	uint8_t digest[HASH_SHA256_SIZE];
	char hex[HASH_SHA256_HEX_SIZE];

	cr_assert_eq(hash_parse_sha256("sha256:" SHA256_ABC, digest), 0);
	cr_assert_eq(digest[0], 0xba);
	cr_assert_eq(digest[31], 0xad);
	hash_hex(digest, hex);
	cr_assert_str_eq(hex, SHA256_ABC);
	cr_assert_eq(hash_parse_sha256(SHA256_ABC_MIXED, digest), 0);
	hash_hex(digest, hex);
	cr_assert_str_eq(hex, SHA256_ABC);
}

Test(hex, bad_inputs)
{
	static const char *const bad[] = {
		"",
		"sha256:",
		"0",
		/* 63 digits, 65 digits */
		"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85",
		"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b8550",
		"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85",
		"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b8555",
		/* 128 digits */
		SHA256_EMPTY SHA256_EMPTY,
		/* wrong or doubled prefix, whitespace */
		"sha256:sha256:" SHA256_EMPTY,
		"sha512:" SHA256_EMPTY,
		"sha256" SHA256_EMPTY,
		"sha256 :" SHA256_EMPTY,
		":" SHA256_EMPTY,
		" " SHA256_EMPTY,
		SHA256_EMPTY " ",
		SHA256_EMPTY "\n",
		"0x" SHA256_EMPTY,
		"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b8-5",
		"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85g",
	};
	uint8_t out[HASH_SHA256_SIZE], untouched[HASH_SHA256_SIZE];

	memset(untouched, 0xa5, sizeof(untouched));
	memcpy(out, untouched, sizeof(out));
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		cr_expect_eq(hash_parse_sha256(bad[i], out), -EINVAL, "accepted \"%s\"", bad[i]);
		cr_expect_arr_eq(out, untouched, sizeof(out), "wrote out for \"%s\"", bad[i]);
	}
	cr_expect_eq(hash_parse_sha256(NULL, out), -EINVAL);
}

/* Every position, every non-hex byte. */
Test(hex, bad_character_anywhere)
{
	char text[HASH_SHA256_HEX_SIZE];
	uint8_t out[HASH_SHA256_SIZE];

	for (size_t pos = 0; pos < 64; pos++) {
		for (int c = 1; c < 256; c++) {
			if (strchr("0123456789abcdefABCDEF", c))
				continue;
			memcpy(text, SHA256_EMPTY, sizeof(text));
			text[pos] = (char)c;
			cr_assert_eq(hash_parse_sha256(text, out), -EINVAL, "pos %zu char %d", pos,
				     c);
		}
		/* Cut short at pos. */
		memcpy(text, SHA256_EMPTY, sizeof(text));
		text[pos] = '\0';
		cr_assert_eq(hash_parse_sha256(text, out), -EINVAL, "length %zu", pos);
	}
}
