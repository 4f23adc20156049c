# simdjson's DOM as Cython sees it: the types and error codes _mapping_c.pyx walks.
#
# simdjson.h ships beside pysimdjson's module; setup.py compiles its simdjson.cpp
# into the extension. Only what the mapper uses is declared: the parser, elements,
# objects and arrays with their iterators, and the error codes it tells apart.
# Reading an element's value goes through _helpers.hpp (el_kind, el_str, ...),
# which checks nothing: the caller has checked the type.

from libc.stdint cimport uint32_t


cdef extern from "simdjson.h":
    int SIMDJSON_SUCCESS "simdjson::SUCCESS"
    int SIMDJSON_MEMALLOC "simdjson::MEMALLOC"
    int SIMDJSON_DEPTH_ERROR "simdjson::DEPTH_ERROR"
    int SIMDJSON_UTF8_ERROR "simdjson::UTF8_ERROR"
    int SIMDJSON_EMPTY "simdjson::EMPTY"

    cdef cppclass Element "simdjson::dom::element":
        Element()

    cdef cppclass Object "simdjson::dom::object":
        cppclass iterator:
            iterator()
            iterator& operator++()
            bint operator!=(iterator)
            uint32_t key_length()
            const char* key_c_str()
            Element value()
        Object()
        iterator begin()
        iterator end()
        size_t size()

    cdef cppclass Array "simdjson::dom::array":
        cppclass iterator:
            iterator()
            iterator& operator++()
            bint operator!=(iterator)
            Element operator*()
        Array()
        iterator begin()
        iterator end()
        size_t size()

    cdef cppclass Parser "simdjson::dom::parser":
        Parser() except +
