"""Build cairn's native parts (C, all release the GIL): restic's Rabin chunker, scrypt's
ROMix for one lane (so the lanes of a key derivation run on all cores), and the count of
a directory tree behind the progress display's ETA."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "cairn.chunker._rabin",
            sources=["src/cairn/chunker/_rabin.c"],
            extra_compile_args=["-O3", "-std=c11"],
        ),
        Extension(
            "cairn.repo._scrypt",
            sources=["src/cairn/repo/_scrypt.c"],
            extra_compile_args=["-O3", "-std=c11"],
        ),
        Extension(
            "cairn.archiver._treecount",
            sources=["src/cairn/archiver/_treecount.c"],
            extra_compile_args=["-O2", "-std=c11"],
        ),
        Extension(
            "cairn.archiver._listdir",
            sources=["src/cairn/archiver/_listdir.c"],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra"],
        ),
    ]
)
