# C types for the compiled twin of image_links.py (Cython's "augmenting .pxd"; the .py stays plain
# Python and is the only source of behaviour). Built by cah_resources/compiled.py; without a built
# twin this file is unused. Keep names and arguments in step with image_links.py: the build fails
# on a mismatch, and tests/test_compiled.py compares the twin with the Python code.
import cython

@cython.locals(src=str, alt=str, head=str, url=str, host=str, path=str, kept=list, dropped=list,
               truncated=list, min_alt=cython.Py_ssize_t, max_alt=cython.Py_ssize_t,
               max_domain=cython.Py_ssize_t, plain_known=cython.bint, extensions=tuple)
cpdef check_image_links(images, str base, filters)

cpdef _split_absolute(str src)

@cython.locals(path=str, query=str)
cpdef _resolve_relative(str src, plain)

@cython.locals(host=str, path=str, directory=str, scheme=str)
cpdef _plain_base(str base)

@cython.locals(fragment=cython.Py_ssize_t, query_at=cython.Py_ssize_t, slash=cython.Py_ssize_t,
               rest=str, head=str, host=str, path=str, lower=str, query=str)
cpdef _split_plain(str scheme, str url, Py_ssize_t start)

@cython.locals(path=str, query=str)
cpdef _path_and_query(str tail)
