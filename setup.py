"""Build cairn's two native parts (C, both release the GIL): restic's Rabin chunker, and
scrypt's ROMix for one lane (so the lanes of a key derivation run on all cores)."""

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
    ]
)
