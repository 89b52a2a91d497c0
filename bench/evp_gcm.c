/*
 * evp_gcm.c — the single-core AES-256-GCM reference for bench/atrest.sh.
 *
 * A plain OpenSSL EVP loop: one thread, one buffer of SIZE bytes, sealed (encrypt in place,
 * fresh IV per message, tag taken) and opened (decrypt into a second buffer, tag checked) over
 * and over. Timing covers only the EVP calls: no file I/O, no allocation inside the loop.
 * `openssl speed` reads 20–35% below such a loop on this kind of machine, so this is the figure
 * the at-rest targets are compared with (see /work/shared/NOTES.md).
 *
 *   cc -O2 -o evp_gcm bench/evp_gcm.c -lcrypto
 *   taskset -c 0 ./evp_gcm SIZE_BYTES [SECONDS_PER_ROUND] [ROUNDS]
 *
 * Output, one line per direction (GB = 10^9 bytes; best round):
 *   evp enc <size> <GB/s>
 *   evp dec <size> <GB/s>
 */
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void die(const char *what) {
    fprintf(stderr, "evp_gcm: %s failed\n", what);
    ERR_print_errors_fp(stderr);
    exit(1);
}

/* Seal buf[0..len) in place under key/iv; tag out. */
static void seal(EVP_CIPHER_CTX *ctx, const unsigned char *key, const unsigned char *iv,
                 unsigned char *buf, size_t len, unsigned char tag[16]) {
    int outl = 0;
    if (EVP_EncryptInit_ex(ctx, NULL, NULL, key, iv) != 1) die("EncryptInit");
    /* EVP_*Update takes an int length: feed at most 1 GiB at a time. */
    size_t done = 0;
    while (done < len) {
        size_t n = len - done > (1u << 30) ? (1u << 30) : len - done;
        if (EVP_EncryptUpdate(ctx, buf + done, &outl, buf + done, (int)n) != 1)
            die("EncryptUpdate");
        done += n;
    }
    if (EVP_EncryptFinal_ex(ctx, buf + len, &outl) != 1) die("EncryptFinal");
    if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, tag) != 1) die("GET_TAG");
}

/* Open ct[0..len) into pt under key/iv with tag; exits if the tag does not check. */
static void open_(EVP_CIPHER_CTX *ctx, const unsigned char *key, const unsigned char *iv,
                  const unsigned char *ct, unsigned char *pt, size_t len,
                  unsigned char tag[16]) {
    int outl = 0;
    if (EVP_DecryptInit_ex(ctx, NULL, NULL, key, iv) != 1) die("DecryptInit");
    size_t done = 0;
    while (done < len) {
        size_t n = len - done > (1u << 30) ? (1u << 30) : len - done;
        if (EVP_DecryptUpdate(ctx, pt + done, &outl, ct + done, (int)n) != 1)
            die("DecryptUpdate");
        done += n;
    }
    if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, 16, tag) != 1) die("SET_TAG");
    if (EVP_DecryptFinal_ex(ctx, pt + len, &outl) != 1) die("DecryptFinal (tag mismatch)");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s SIZE_BYTES [SECONDS_PER_ROUND] [ROUNDS]\n", argv[0]);
        return 2;
    }
    size_t len = strtoull(argv[1], NULL, 10);
    double secs = argc > 2 ? atof(argv[2]) : 1.0;
    int rounds = argc > 3 ? atoi(argv[3]) : 3;
    if (len == 0 || secs <= 0 || rounds <= 0) {
        fprintf(stderr, "evp_gcm: bad arguments\n");
        return 2;
    }

    unsigned char key[32], iv[12], tag[16];
    unsigned char *a = malloc(len + 16), *b = malloc(len + 16);
    if (!a || !b) die("malloc");
    if (RAND_bytes(key, sizeof key) != 1 || RAND_bytes(iv, sizeof iv) != 1) die("RAND_bytes");
    /* Cheap non-zero content, pages touched before timing. */
    for (size_t i = 0; i < len; i++) a[i] = (unsigned char)(i * 131u + 7u);
    memset(b, 0, len + 16);

    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (!ctx) die("CTX_new");
    if (EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) != 1) die("EncryptInit");

    /* Encrypt: in place, new IV per message (as a writer would). */
    double best_enc = 0;
    for (int r = 0; r < rounds; r++) {
        size_t bytes = 0;
        double t0 = now(), t;
        do {
            iv[11]++;
            seal(ctx, key, iv, a, len, tag);
            bytes += len;
        } while ((t = now() - t0) < secs);
        double gbs = (double)bytes / t / 1e9;
        if (gbs > best_enc) best_enc = gbs;
    }

    /* Decrypt: a is now the ciphertext of the last (iv, tag); open it into b repeatedly. */
    EVP_CIPHER_CTX *dctx = EVP_CIPHER_CTX_new();
    if (!dctx) die("CTX_new");
    if (EVP_DecryptInit_ex(dctx, EVP_aes_256_gcm(), NULL, NULL, NULL) != 1) die("DecryptInit");
    double best_dec = 0;
    for (int r = 0; r < rounds; r++) {
        size_t bytes = 0;
        double t0 = now(), t;
        do {
            open_(dctx, key, iv, a, b, len, tag);
            bytes += len;
        } while ((t = now() - t0) < secs);
        double gbs = (double)bytes / t / 1e9;
        if (gbs > best_dec) best_dec = gbs;
    }

    printf("evp enc %zu %.3f\n", len, best_enc);
    printf("evp dec %zu %.3f\n", len, best_dec);
    EVP_CIPHER_CTX_free(ctx);
    EVP_CIPHER_CTX_free(dctx);
    free(a);
    free(b);
    return 0;
}
