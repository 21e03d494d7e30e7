/*
 * scrypt's ROMix (RFC 7914, section 5) for one lane, with the GIL released.
 *
 * scrypt's p lanes are independent: OpenSSL (and Go, which restic uses) run them one after
 * another, so opening a repository costs p times one lane on one core. cairn runs the
 * lanes on all cores (repo/kdf.py) and needs ROMix alone for that, which no library
 * exposes. Same N, r, p, same derived key: the cost to an attacker is unchanged, only
 * the user's wait is shorter. Tests compare every result with OpenSSL's scrypt.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define ROTL(a, b) (((a) << (b)) | ((a) >> (32 - (b))))

/* Salsa20/8 core on 16 words, in place. */
static void salsa20_8(uint32_t b[16]) {
    uint32_t x[16];
    memcpy(x, b, sizeof(x));
    for (int i = 0; i < 8; i += 2) {
        /* columns */
        x[4] ^= ROTL(x[0] + x[12], 7);
        x[8] ^= ROTL(x[4] + x[0], 9);
        x[12] ^= ROTL(x[8] + x[4], 13);
        x[0] ^= ROTL(x[12] + x[8], 18);
        x[9] ^= ROTL(x[5] + x[1], 7);
        x[13] ^= ROTL(x[9] + x[5], 9);
        x[1] ^= ROTL(x[13] + x[9], 13);
        x[5] ^= ROTL(x[1] + x[13], 18);
        x[14] ^= ROTL(x[10] + x[6], 7);
        x[2] ^= ROTL(x[14] + x[10], 9);
        x[6] ^= ROTL(x[2] + x[14], 13);
        x[10] ^= ROTL(x[6] + x[2], 18);
        x[3] ^= ROTL(x[15] + x[11], 7);
        x[7] ^= ROTL(x[3] + x[15], 9);
        x[11] ^= ROTL(x[7] + x[3], 13);
        x[15] ^= ROTL(x[11] + x[7], 18);
        /* rows */
        x[1] ^= ROTL(x[0] + x[3], 7);
        x[2] ^= ROTL(x[1] + x[0], 9);
        x[3] ^= ROTL(x[2] + x[1], 13);
        x[0] ^= ROTL(x[3] + x[2], 18);
        x[6] ^= ROTL(x[5] + x[4], 7);
        x[7] ^= ROTL(x[6] + x[5], 9);
        x[4] ^= ROTL(x[7] + x[6], 13);
        x[5] ^= ROTL(x[4] + x[7], 18);
        x[11] ^= ROTL(x[10] + x[9], 7);
        x[8] ^= ROTL(x[11] + x[10], 9);
        x[9] ^= ROTL(x[8] + x[11], 13);
        x[10] ^= ROTL(x[9] + x[8], 18);
        x[12] ^= ROTL(x[15] + x[14], 7);
        x[13] ^= ROTL(x[12] + x[15], 9);
        x[14] ^= ROTL(x[13] + x[12], 13);
        x[15] ^= ROTL(x[14] + x[13], 18);
    }
    for (int i = 0; i < 16; i++) b[i] += x[i];
}

/* BlockMix: ``in`` is 2r blocks of 16 words; ``out`` receives the even-indexed results
 * first, then the odd-indexed ones. */
static void block_mix(const uint32_t *in, uint32_t *out, size_t r) {
    uint32_t x[16];
    memcpy(x, in + (2 * r - 1) * 16, sizeof(x));
    for (size_t i = 0; i < 2 * r; i++) {
        for (int k = 0; k < 16; k++) x[k] ^= in[i * 16 + k];
        salsa20_8(x);
        memcpy(out + ((i / 2) + (i & 1) * r) * 16, x, sizeof(x));
    }
}

/* ROMix on ``x`` (32r words); ``t`` is 32r words. ``v`` holds every ``stride``-th of the N
 * entries (N / stride of them): an entry not kept is recomputed from the kept one before it
 * when the second loop needs it: the classic time-memory trade-off (stride 4 keeps a
 * quarter of the memory; measured, a lane takes 1.2x the time, since fewer random reads
 * miss the CPU caches; repo/scrypt.py runs two such lanes at once
 * in half the 32 MiB one lane of restic's parameters takes). The result is the same
 * either way. */
static void romix(uint32_t *x, uint32_t *v, uint32_t *t, uint32_t *u, size_t r, uint64_t n,
                  uint64_t stride) {
    const size_t words = 32 * r;
    const size_t bytes = words * sizeof(uint32_t);
    for (uint64_t i = 0; i < n; i++) {
        if (i % stride == 0) memcpy(v + (i / stride) * words, x, bytes);
        block_mix(x, t, r);
        memcpy(x, t, bytes);
    }
    for (uint64_t i = 0; i < n; i++) {
        /* Integerify: the first word of the last block, mod N (N is a power of two). */
        uint64_t j = x[(2 * r - 1) * 16] & (n - 1);
        const uint32_t *vj = v + (j / stride) * words;
        uint64_t missing = j % stride;
        if (missing) {
            memcpy(u, vj, bytes);
            for (; missing; missing--) {
                block_mix(u, t, r);
                memcpy(u, t, bytes);
            }
            vj = u;
        }
        for (size_t k = 0; k < words; k++) x[k] ^= vj[k];
        block_mix(x, t, r);
        memcpy(x, t, bytes);
    }
}

static uint32_t load_le32(const unsigned char *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

static void store_le32(unsigned char *p, uint32_t w) {
    p[0] = (unsigned char)w;
    p[1] = (unsigned char)(w >> 8);
    p[2] = (unsigned char)(w >> 16);
    p[3] = (unsigned char)(w >> 24);
}

PyDoc_STRVAR(romix_doc,
             "romix(block, n, r, stride=1) -> bytes\n\n"
             "scrypt's ROMix of one 128*r-byte lane with cost N (a power of two); needs\n"
             "128*r*N/stride bytes of scratch memory (stride a power of two below N).\n"
             "Releases the GIL.");

static PyObject *romix_py(PyObject *self, PyObject *args) {
    Py_buffer block;
    unsigned long long n;
    unsigned long long stride = 1;
    Py_ssize_t r;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*Kn|K", &block, &n, &r, &stride)) return NULL;
    if (r < 1 || r > (1 << 20) || n < 2 || (n & (n - 1)) || n > (1ULL << 32) ||
        block.len != 128 * r || stride < 1 || (stride & (stride - 1)) || stride >= n) {
        PyBuffer_Release(&block);
        PyErr_SetString(PyExc_ValueError, "romix: bad block length, N, r or stride");
        return NULL;
    }
    const size_t words = 32 * (size_t)r;
    if ((uint64_t)n > SIZE_MAX / (words * sizeof(uint32_t))) {
        PyBuffer_Release(&block);
        return PyErr_NoMemory();
    }
    uint32_t *x = malloc(words * sizeof(uint32_t));
    uint32_t *t = malloc(words * sizeof(uint32_t));
    uint32_t *u = malloc(words * sizeof(uint32_t));
    /* The table (16 MiB at restic's N and r) is mapped, not malloc'ed: after the first
     * free of a block that large, glibc raises its mmap threshold and serves the next one
     * from a thread's arena, which kept both lanes' 32 MiB resident for the rest of the
     * process (measured: 30 -> 63 MiB RSS after opening a repository). munmap returns it. */
    const size_t v_bytes = (size_t)(n / stride) * words * sizeof(uint32_t);
    uint32_t *v = mmap(NULL, v_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (v == MAP_FAILED) v = NULL;
    if (!x || !t || !u || !v) {
        free(x);
        free(t);
        free(u);
        if (v) munmap(v, v_bytes);
        PyBuffer_Release(&block);
        return PyErr_NoMemory();
    }
    const unsigned char *in = block.buf;
    for (size_t k = 0; k < words; k++) x[k] = load_le32(in + 4 * k);
    PyBuffer_Release(&block);

    Py_BEGIN_ALLOW_THREADS
    romix(x, v, t, u, (size_t)r, (uint64_t)n, (uint64_t)stride);
    Py_END_ALLOW_THREADS

    munmap(v, v_bytes);
    free(u);
    free(t);
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(words * 4));
    if (out != NULL) {
        unsigned char *o = (unsigned char *)PyBytes_AS_STRING(out);
        for (size_t k = 0; k < words; k++) store_le32(o + 4 * k, x[k]);
    }
    free(x);
    return out;
}

static PyMethodDef methods[] = {
    {"romix", romix_py, METH_VARARGS, romix_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_scrypt", "scrypt's ROMix, one lane, GIL released.", -1, methods,
};

PyMODINIT_FUNC PyInit__scrypt(void) { return PyModule_Create(&module); }
