/* Totals of a directory tree for the progress display's ETA: regular files, their
 * bytes, and directories, counted by the C library's nftw() without the GIL.
 *
 * The same count in Python (scandir, lstat, a few attribute reads per entry) took
 * 0.30 s of CPU on 100,000 files, held the GIL between system calls, and was 3% of a
 * whole backup's CPU time; the progress display is allowed 2%. Only the rule-free case
 * comes here: exclude rules are Python's (archiver/select.py), and the Python scanner
 * keeps them.
 */
#define _XOPEN_SOURCE 700
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <ftw.h>
#include <sys/stat.h>

/* nftw() passes no user pointer to its callback: each thread counts in its own. */
static __thread unsigned long long files_seen, dirs_seen, bytes_seen;
static __thread const volatile unsigned char *stop_flag;

static int count_entry(const char *path, const struct stat *st, int kind, struct FTW *where)
{
    (void)path;
    (void)where;
    if (stop_flag != NULL && *stop_flag)
        return 1; /* any non-zero return ends the walk */
    if (kind == FTW_D || kind == FTW_DNR) {
        dirs_seen++;
    } else if (kind == FTW_F && S_ISREG(st->st_mode)) {
        files_seen++;
        bytes_seen += (unsigned long long)st->st_size;
    }
    return 0; /* FTW_NS (cannot stat) and the rest: skipped, as the Python scanner does */
}

PyDoc_STRVAR(count_doc,
"count(path: bytes, stop: bytearray) -> (files, dirs, bytes, finished)\n\n"
"Walk ``path`` without following symbolic links; regular files and their sizes,\n"
"directories (``path`` itself included). A non-zero ``stop[0]`` ends the walk early\n"
"(finished is then False). Entries that cannot be read are skipped.");

static PyObject *count(PyObject *self, PyObject *args)
{
    (void)self;
    const char *path;
    Py_buffer stop;
    if (!PyArg_ParseTuple(args, "yw*", &path, &stop))
        return NULL;
    if (stop.len < 1) {
        PyBuffer_Release(&stop);
        PyErr_SetString(PyExc_ValueError, "stop must hold at least one byte");
        return NULL;
    }
    int rc;
    unsigned long long files, dirs, nbytes;
    Py_BEGIN_ALLOW_THREADS
    files_seen = dirs_seen = bytes_seen = 0;
    stop_flag = (const volatile unsigned char *)stop.buf;
    /* 64 descriptors at most: deeper trees close and reopen their directories */
    rc = nftw(path, count_entry, 64, FTW_PHYS);
    stop_flag = NULL;
    files = files_seen;
    dirs = dirs_seen;
    nbytes = bytes_seen;
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&stop);
    /* rc -1: the root itself could not be walked; what was counted stands */
    return Py_BuildValue("KKKO", files, dirs, nbytes, rc == 0 ? Py_True : Py_False);
}

static PyMethodDef methods[] = {
    {"count", count, METH_VARARGS, count_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_treecount", "Directory tree totals without the GIL.", -1, methods,
};

PyMODINIT_FUNC PyInit__treecount(void) { return PyModule_Create(&module); }
