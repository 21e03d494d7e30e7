/* One directory's listing for its signature (archiver/dirsig.py), read without the GIL.
 *
 * The metadata prefetch (archiver/prefetch.py) lists every directory of a backup's
 * targets. In Python each entry is a scandir step, an lstat and a few attribute reads,
 * and each system call hands the GIL over and waits to take it back: with a cold cache
 * four such threads beside any Python work in the backup's own thread made both slower
 * (the walk's tree decoding during the listing cost as much as it saved). Here a whole
 * directory is read, sorted and lstat'ed (fstatat, relative to the open directory, so
 * the path is not resolved again per entry) in one call that releases the GIL.
 */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* dirsig.entry_signature: name, NUL, then struct "<IQQQIIQqqq" (68 bytes). */
#define PACKED 68

typedef struct {
    char *name;
    size_t len;
    struct stat st;
    int ok;
} entry_t;

static int by_name(const void *a, const void *b)
{
    /* Python orders bytes by unsigned value, a prefix first: strcmp's order for names,
     * which hold no NUL. */
    return strcmp(((const entry_t *)a)->name, ((const entry_t *)b)->name);
}

static unsigned char *put(unsigned char *p, uint64_t v, int bytes)
{
    for (int i = 0; i < bytes; i++)
        *p++ = (unsigned char)(v >> (8 * i));
    return p;
}

static int64_t nanoseconds(struct timespec t)
{
    return (int64_t)t.tv_sec * 1000000000 + (int64_t)t.tv_nsec;
}

static unsigned char *pack(unsigned char *p, const entry_t *e)
{
    const struct stat *st = &e->st;
    memcpy(p, e->name, e->len + 1); /* with its NUL */
    p += e->len + 1;
    p = put(p, (uint64_t)st->st_mode, 4);
    p = put(p, (uint64_t)st->st_ino, 8);
    p = put(p, (uint64_t)st->st_dev, 8);
    p = put(p, (uint64_t)st->st_nlink, 8);
    p = put(p, (uint64_t)st->st_uid, 4);
    p = put(p, (uint64_t)st->st_gid, 4);
    p = put(p, (uint64_t)st->st_rdev, 8);
    p = put(p, (uint64_t)(int64_t)st->st_size, 8);
    p = put(p, (uint64_t)nanoseconds(st->st_mtim), 8);
    p = put(p, (uint64_t)nanoseconds(st->st_ctim), 8);
    return p;
}

static void free_entries(entry_t *entries, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(entries[i].name);
    free(entries);
}

PyDoc_STRVAR(listing_doc,
"listing(path: bytes) -> (entries, count, subdirs, complete)\n\n"
"The entries of directory ``path`` in name order, each as dirsig.entry_signature\n"
"makes it, joined; how many; [(name, st_dev)] of the subdirectories (symbolic links\n"
"not followed); and False if an entry could not be lstat'ed (it is left out).\n"
"OSError if the directory cannot be read.");

static PyObject *listing(PyObject *self, PyObject *args)
{
    (void)self;
    const char *path;
    if (!PyArg_ParseTuple(args, "y", &path))
        return NULL;

    entry_t *entries = NULL;
    size_t n = 0, cap = 0, size = 0;
    unsigned char *buf = NULL;
    int err = 0, oom = 0, complete = 1;

    Py_BEGIN_ALLOW_THREADS
    DIR *dir = opendir(path);
    if (dir == NULL) {
        err = errno;
    } else {
        for (;;) {
            errno = 0;
            struct dirent *de = readdir(dir);
            if (de == NULL) {
                err = errno;
                break;
            }
            const char *name = de->d_name;
            if (name[0] == '.' && (name[1] == 0 || (name[1] == '.' && name[2] == 0)))
                continue;
            if (n == cap) {
                size_t more = cap ? 2 * cap : 64;
                entry_t *grown = realloc(entries, more * sizeof *entries);
                if (grown == NULL) {
                    oom = 1;
                    break;
                }
                entries = grown;
                cap = more;
            }
            size_t len = strlen(name);
            char *copy = malloc(len + 1);
            if (copy == NULL) {
                oom = 1;
                break;
            }
            memcpy(copy, name, len + 1);
            entries[n].name = copy;
            entries[n].len = len;
            n++;
        }
        if (!err && !oom) {
            qsort(entries, n, sizeof *entries, by_name);
            int fd = dirfd(dir);
            for (size_t i = 0; i < n; i++) {
                entries[i].ok =
                    fstatat(fd, entries[i].name, &entries[i].st, AT_SYMLINK_NOFOLLOW) == 0;
                if (entries[i].ok)
                    size += entries[i].len + 1 + PACKED;
                else
                    complete = 0;
            }
            buf = malloc(size ? size : 1);
            if (buf == NULL) {
                oom = 1;
            } else {
                unsigned char *p = buf;
                for (size_t i = 0; i < n; i++)
                    if (entries[i].ok)
                        p = pack(p, &entries[i]);
            }
        }
        closedir(dir);
    }
    Py_END_ALLOW_THREADS

    if (err || oom) {
        free_entries(entries, n);
        free(buf);
        if (oom)
            return PyErr_NoMemory();
        errno = err;
        return PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, PyTuple_GET_ITEM(args, 0));
    }
    PyObject *result = NULL, *joined = NULL, *subdirs = PyList_New(0);
    if (subdirs == NULL)
        goto done;
    size_t listed = 0;
    for (size_t i = 0; i < n; i++) {
        if (!entries[i].ok)
            continue;
        listed++;
        if (!S_ISDIR(entries[i].st.st_mode))
            continue;
        PyObject *item = Py_BuildValue(
            "(y#K)", entries[i].name, (Py_ssize_t)entries[i].len,
            (unsigned long long)entries[i].st.st_dev);
        if (item == NULL || PyList_Append(subdirs, item) < 0) {
            Py_XDECREF(item);
            goto done;
        }
        Py_DECREF(item);
    }
    joined = PyBytes_FromStringAndSize((const char *)buf, (Py_ssize_t)size);
    if (joined == NULL)
        goto done;
    result = Py_BuildValue("(OnOO)", joined, (Py_ssize_t)listed, subdirs,
                           complete ? Py_True : Py_False);
done:
    Py_XDECREF(joined);
    Py_XDECREF(subdirs);
    free_entries(entries, n);
    free(buf);
    return result;
}

static PyMethodDef methods[] = {
    {"listing", listing, METH_VARARGS, listing_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_listdir", "A directory's signed listing without the GIL.", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__listdir(void) { return PyModule_Create(&module); }
