"""Build the one native part of cairn: restic's Rabin chunker (C, releases the GIL)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "cairn.chunker._rabin",
            sources=["src/cairn/chunker/_rabin.c"],
            extra_compile_args=["-O3", "-std=c11"],
        )
    ]
)
