/*
 * restic-compatible content-defined chunker (Rabin fingerprints over GF(2)).
 *
 * The cut rule (spec section 13.3): the chunk that starts at s ends at the
 * smallest e with e - s >= min_size and either fp(data[e-64:e]) & mask == 0
 * or e - s == max_size.  A fingerprint depends only on the 64 bytes of its
 * window, so instead of one long rolling-hash dependency chain (latency
 * bound, ~0.6 GB/s) the candidate range is cut into LANES independent
 * segments whose rolling hashes are interleaved; each segment starts by
 * hashing its first window from scratch.  The CPU overlaps the lanes'
 * table look-ups, which roughly triples throughput.  The scan runs without
 * the GIL.
 *
 * Rolling step: appending byte c to a fully reduced fingerprint h is
 *     h' = ((h << 8) | c) ^ mod_table[h >> (k - 8)]
 * and the byte o leaving the 64-byte window is removed by XOR with
 * o * x^(8*64) mod P (by linearity; restic removes o * x^(8*63) before the
 * shift, which is the same value).  Doing it after the shift keeps that
 * look-up off the dependency chain.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define WINDOW 64
#define LANES 4
#define DEFAULT_SEGMENT 16384
/* Release the GIL only for scans long enough to be worth the hand-over. */
#define GIL_RELEASE_THRESHOLD 65536

typedef struct {
    PyObject_HEAD
    uint64_t pol;
    int deg;
    int shift;              /* deg - 8: position of the top byte of a fingerprint */
    uint64_t mask;
    Py_ssize_t min_size;
    Py_ssize_t max_size;
    Py_ssize_t segment;     /* positions per lane per round */
    uint64_t mod_table[256];
    uint64_t out64[256];    /* b * x^(8*64) mod P: removes b after the shift */
    uint64_t out63[256];    /* b * x^(8*63) mod P: restic's out_table (for tests) */
} RabinObject;

static int degree(uint64_t p) { return p ? 63 - __builtin_clzll(p) : -1; }

/* a mod p over GF(2), for a < 2^64. */
static uint64_t pmod64(uint64_t a, uint64_t p) {
    int dp = degree(p);
    int da;
    while ((da = degree(a)) >= dp) a ^= p << (da - dp);
    return a;
}

static inline uint64_t append_byte(const RabinObject *r, uint64_t h, uint8_t c) {
    return ((h << 8) | c) ^ r->mod_table[h >> r->shift];
}

static void build_tables(RabinObject *r) {
    /* mod_table[b] = ((b << k) mod P) XOR (b << k): XOR with it cancels the
     * byte that overflowed past bit k-1 and adds its reduction instead. */
    for (int b = 0; b < 256; b++) {
        uint64_t hi = (uint64_t)b << r->deg;
        r->mod_table[b] = pmod64(hi, r->pol) ^ hi;
    }
    for (int b = 0; b < 256; b++) {
        uint64_t h = 0;
        h = append_byte(r, h, (uint8_t)b);
        for (int i = 0; i < WINDOW - 1; i++) h = append_byte(r, h, 0);
        r->out63[b] = h;
        r->out64[b] = append_byte(r, h, 0);
    }
}

/* Fingerprint of the window p[e-64 .. e-1], computed from scratch. */
static inline uint64_t window_fp(const RabinObject *r, const uint8_t *p, Py_ssize_t e) {
    uint64_t h = 0;
    for (Py_ssize_t j = e - WINDOW; j < e; j++) h = append_byte(r, h, p[j]);
    return h;
}

/* One lane, positions [first, last]: smallest e with fp & mask == 0, or -1. */
static Py_ssize_t scan_single(const RabinObject *r, const uint8_t *p, Py_ssize_t first,
                              Py_ssize_t last) {
    const uint64_t mask = r->mask;
    uint64_t h = window_fp(r, p, first);
    if ((h & mask) == 0) return first;
    for (Py_ssize_t e = first + 1; e <= last; e++) {
        h = append_byte(r, h, p[e - 1]) ^ r->out64[p[e - 1 - WINDOW]];
        if ((h & mask) == 0) return e;
    }
    return -1;
}

/* Smallest e in [first, last] (first >= 64) whose window fingerprint has
 * the low mask bits clear, or -1. */
static inline __attribute__((always_inline)) Py_ssize_t scan_lanes(
    const RabinObject *r, const uint8_t *p, Py_ssize_t first, Py_ssize_t last, const int shift) {
    const uint64_t mask = r->mask;
    const uint64_t *mt = r->mod_table;
    const uint64_t *ot = r->out64;
    Py_ssize_t b = first;

    for (;;) {
        Py_ssize_t remaining = last - b + 1;
        Py_ssize_t seg = remaining / LANES;
        if (seg > r->segment) seg = r->segment;
        /* Short ranges: the per-lane start-up (64 bytes each) is not worth it. */
        if (seg < 2 * WINDOW && seg < r->segment) break;

        uint64_t h[LANES];
        Py_ssize_t s[LANES], hit[LANES];
        for (int i = 0; i < LANES; i++) {
            s[i] = b + i * seg;
            h[i] = 0;
            hit[i] = -1;
        }
        /* Hash each lane's first window, lanes interleaved. */
        for (Py_ssize_t j = -WINDOW; j < 0; j++) {
            for (int i = 0; i < LANES; i++) {
                h[i] = ((h[i] << 8) | p[s[i] + j]) ^ mt[h[i] >> shift];
            }
        }
        for (int i = 0; i < LANES; i++) {
            if ((h[i] & mask) == 0) hit[i] = s[i];
        }
        if (hit[0] >= 0) return hit[0];

        const uint8_t *in[LANES];
        for (int i = 0; i < LANES; i++) in[i] = p + s[i];
        for (Py_ssize_t j = 0; j + 1 < seg; j++) {
            uint64_t any = 0;
            for (int i = 0; i < LANES; i++) {
                uint8_t c = in[i][j], o = in[i][j - WINDOW];
                h[i] = (((h[i] << 8) | c) ^ mt[h[i] >> shift]) ^ ot[o];
                /* (x & mask) - 1 has its top bit set exactly when x & mask == 0. */
                any |= (h[i] & mask) - 1;
            }
            if (__builtin_expect((int64_t)any < 0, 0)) {
                for (int i = 0; i < LANES; i++) {
                    if (hit[i] < 0 && (h[i] & mask) == 0) hit[i] = s[i] + j + 1;
                }
                if (hit[0] >= 0) return hit[0];
            }
        }
        /* Lanes are in ascending order, so the first lane with a hit wins. */
        for (int i = 0; i < LANES; i++) {
            if (hit[i] >= 0) return hit[i];
        }
        b += LANES * seg;
        if (b > last) return -1;
    }
    return scan_single(r, p, b, last);
}

static Py_ssize_t scan(const RabinObject *r, const uint8_t *p, Py_ssize_t first,
                       Py_ssize_t last) {
    /* restic's polynomials all have degree 53: a constant shift frees a register and
     * avoids variable-count shifts in the hot loop. */
    if (r->shift == 53 - 8) return scan_lanes(r, p, first, last, 53 - 8);
    return scan_lanes(r, p, first, last, r->shift);
}

/* --- Python type ------------------------------------------------------ */

static int Rabin_init(RabinObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"polynomial", "min_size", "max_size", "mask_bits", "segment", NULL};
    PyObject *pol_obj;
    Py_ssize_t min_size = 512 * 1024, max_size = 8 * 1024 * 1024, segment = DEFAULT_SEGMENT;
    int mask_bits = 20;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|nnin", kwlist, &pol_obj, &min_size,
                                     &max_size, &mask_bits, &segment)) {
        return -1;
    }
    unsigned long long pol = PyLong_AsUnsignedLongLong(pol_obj);
    if (pol == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    int deg = degree(pol);
    /* The top byte must exist (deg >= 8) and h << 8 must fit in 64 bits. */
    if (deg < 9 || deg > 56) {
        PyErr_SetString(PyExc_ValueError, "polynomial degree must be between 9 and 56");
        return -1;
    }
    if (min_size < WINDOW || max_size < min_size) {
        PyErr_SetString(PyExc_ValueError, "need 64 <= min_size <= max_size");
        return -1;
    }
    if (mask_bits < 1 || mask_bits > deg) {
        PyErr_SetString(PyExc_ValueError, "mask_bits out of range");
        return -1;
    }
    if (segment < 1) {
        PyErr_SetString(PyExc_ValueError, "segment must be positive");
        return -1;
    }
    self->pol = pol;
    self->deg = deg;
    self->shift = deg - 8;
    self->mask = ((uint64_t)1 << mask_bits) - 1;
    self->min_size = min_size;
    self->max_size = max_size;
    self->segment = segment;
    build_tables(self);
    return 0;
}

PyDoc_STRVAR(find_cut_doc,
             "find_cut(buffer, start, end, eof) -> int\n\n"
             "Length of the chunk that starts at buffer[start], looking only at\n"
             "buffer[start:end]; -1 when more data is needed to decide (not eof);\n"
             "0 when start == end and eof.");

static PyObject *Rabin_find_cut(RabinObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t start, end;
    int eof;
    if (self->deg == 0) {
        PyErr_SetString(PyExc_RuntimeError, "Rabin object is not initialised");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "y*nnp", &view, &start, &end, &eof)) return NULL;
    if (start < 0 || end < start || end > view.len) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "need 0 <= start <= end <= len(buffer)");
        return NULL;
    }
    Py_ssize_t avail = end - start, result;
    if (avail < self->min_size) {
        result = eof ? avail : -1;
    } else {
        Py_ssize_t first = start + self->min_size;
        Py_ssize_t last = start + self->max_size < end ? start + self->max_size : end;
        const uint8_t *p = (const uint8_t *)view.buf;
        Py_ssize_t hit;
        if (last - first >= GIL_RELEASE_THRESHOLD) {
            Py_BEGIN_ALLOW_THREADS
            hit = scan(self, p, first, last);
            Py_END_ALLOW_THREADS
        } else {
            hit = scan(self, p, first, last);
        }
        if (hit >= 0) {
            result = hit - start;
        } else if (start + self->max_size <= end) {
            result = self->max_size;
        } else {
            result = eof ? avail : -1;
        }
    }
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(result);
}

PyDoc_STRVAR(fingerprint_doc,
             "fingerprint(data) -> int\n\n"
             "Rabin fingerprint of all of data (B(x) mod P), via the tables.");

static PyObject *Rabin_fingerprint(RabinObject *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    const uint8_t *p = (const uint8_t *)view.buf;
    uint64_t h = 0;
    for (Py_ssize_t i = 0; i < view.len; i++) h = append_byte(self, h, p[i]);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLongLong(h);
}

static PyObject *table_tuple(const uint64_t *t) {
    PyObject *tup = PyTuple_New(256);
    if (tup == NULL) return NULL;
    for (int i = 0; i < 256; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(t[i]);
        if (v == NULL) {
            Py_DECREF(tup);
            return NULL;
        }
        PyTuple_SET_ITEM(tup, i, v);
    }
    return tup;
}

PyDoc_STRVAR(tables_doc,
             "tables() -> (out_table, mod_table)\n\n"
             "restic's two 256-entry tables (spec section 13.4), for tests.");

static PyObject *Rabin_tables(RabinObject *self, PyObject *Py_UNUSED(ignored)) {
    PyObject *out = table_tuple(self->out63);
    if (out == NULL) return NULL;
    PyObject *mod = table_tuple(self->mod_table);
    if (mod == NULL) {
        Py_DECREF(out);
        return NULL;
    }
    return Py_BuildValue("(NN)", out, mod);
}

static PyObject *Rabin_get_polynomial(RabinObject *self, void *closure) {
    return PyLong_FromUnsignedLongLong(self->pol);
}
static PyObject *Rabin_get_min_size(RabinObject *self, void *closure) {
    return PyLong_FromSsize_t(self->min_size);
}
static PyObject *Rabin_get_max_size(RabinObject *self, void *closure) {
    return PyLong_FromSsize_t(self->max_size);
}
static PyObject *Rabin_get_mask(RabinObject *self, void *closure) {
    return PyLong_FromUnsignedLongLong(self->mask);
}

static PyMethodDef Rabin_methods[] = {
    {"find_cut", (PyCFunction)Rabin_find_cut, METH_VARARGS, find_cut_doc},
    {"fingerprint", (PyCFunction)Rabin_fingerprint, METH_O, fingerprint_doc},
    {"tables", (PyCFunction)Rabin_tables, METH_NOARGS, tables_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Rabin_getset[] = {
    {"polynomial", (getter)Rabin_get_polynomial, NULL, "the polynomial P", NULL},
    {"min_size", (getter)Rabin_get_min_size, NULL, "minimum chunk size", NULL},
    {"max_size", (getter)Rabin_get_max_size, NULL, "maximum chunk size", NULL},
    {"mask", (getter)Rabin_get_mask, NULL, "split mask", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject RabinType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "cairn.chunker._rabin.Rabin",
    .tp_doc = PyDoc_STR("Rabin(polynomial, min_size=524288, max_size=8388608, mask_bits=20, "
                        "segment=16384)\n\nrestic's chunker tables for one polynomial."),
    .tp_basicsize = sizeof(RabinObject),
    .tp_itemsize = 0,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Rabin_init,
    .tp_methods = Rabin_methods,
    .tp_getset = Rabin_getset,
};

static struct PyModuleDef rabin_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_rabin",
    .m_doc = "restic-compatible Rabin content-defined chunker (releases the GIL).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__rabin(void) {
    if (PyType_Ready(&RabinType) < 0) return NULL;
    PyObject *m = PyModule_Create(&rabin_module);
    if (m == NULL) return NULL;
    Py_INCREF(&RabinType);
    if (PyModule_AddObject(m, "Rabin", (PyObject *)&RabinType) < 0) {
        Py_DECREF(&RabinType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
