# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# distutils: language = c++
"""The per-event hot path, compiled: the simdjson DOM walked from C++.

Same names and the same output, byte for byte, as ``_mapping_py`` (the
oracle twin): docs/mapping.md "Event mapping", row by row. A body is parsed by the
calling thread's own ``simdjson::dom::parser`` and each item is mapped by
walking the DOM directly: no Python dict per item, the dims/measures JSON
text is built in C, and an accepted event costs about ten Python objects
(the row and its strings). The rare paths (non-ASCII event names and keys,
ecommerce strings, the messageId fallback hash, non-ASCII ``type``) call
the twin's own helpers, so both agree by construction.

A parser is reused for every body its thread parses, which invalidates the
previous document: a ``Document`` is bound to its thread and to the parse
generation, and raises RuntimeError when used after either changed. No
simdjson view leaves a method call.

Imports only the standard library, ``drengr.core`` and ``_mapping_py``;
links simdjson (compiled in by setup.py from pysimdjson's sources), whose
DOM types ``_simdjson.pxd`` declares. The C++ helpers are in ``_helpers.hpp``.
"""

cimport cython
from cpython.pythread cimport PyThread_get_thread_ident
from cython.operator cimport dereference as deref
from cython.operator cimport preincrement as inc
from libc.stdint cimport SIZE_MAX, int64_t, uint32_t, uint64_t
from libc.string cimport memcmp, strlen

from ._simdjson cimport (
    SIMDJSON_DEPTH_ERROR,
    SIMDJSON_EMPTY,
    SIMDJSON_MEMALLOC,
    SIMDJSON_SUCCESS,
    SIMDJSON_UTF8_ERROR,
    Array,
    Element,
    Object,
    Parser,
)

import threading

from . import _mapping_py
from ..core import limits, routes
from ..core.errors import InvalidJSON


# ------------------------------------------------------------------ C++ helpers
# Plain C++ beside simdjson, in _helpers.hpp: buffers, JSON string escaping,
# number and timestamp text, key sets, the PII matcher, the field scanners.

cdef extern from "_helpers.hpp":
    cdef cppclass Buf "drengr::Buf":
        char* p
        size_t n
        bint failed
        bint reserve(size_t)
        void put(const char*, size_t)
        void putc(char)
        void clear()

    cdef cppclass PiiMatcher "drengr::PiiMatcher":
        void add(const char*, size_t) except +
        int test_cached(const char*, size_t)

    cdef cppclass KeySet "drengr::KeySet":
        int start(size_t)
        bint add(const char*, uint32_t)

    cdef cppclass Kept "drengr::Kept":
        bint has(const char*, size_t, uint64_t)
        void add(const char*, size_t, uint64_t, bint)

    cdef cppclass Frame "drengr::Frame":
        Object.iterator it, end
        Array.iterator ait, aend
        KeySet seen
        bint is_object, first
        size_t size

    cdef cppclass Frames "drengr::Frames":
        Frame* at(size_t)

    cdef cppclass Scratch "drengr::Scratch":
        Buf dims, measures, others, tmp, key, name, num, lib
        Buf priority[4]
        size_t others_end[64]
        int n_others, n_dims, n_dim_entries
        bint busy
        long long strips[5]
        Buf strip_last[5]
        void* names
        void* allow
        void* item
        Kept kept
        KeySet seen
        Frames frames
        Scratch() except +
        void start_item()
        bint failed()

    cdef enum:
        F_TYPE "drengr::F_TYPE"
        F_USER_ID "drengr::F_USER_ID"
        F_ANONYMOUS_ID "drengr::F_ANONYMOUS_ID"
        F_EVENT "drengr::F_EVENT"
        F_PROPERTIES "drengr::F_PROPERTIES"
        F_TRAITS "drengr::F_TRAITS"
        F_CONTEXT "drengr::F_CONTEXT"
        F_TIMESTAMP "drengr::F_TIMESTAMP"
        F_ORIGINAL_TIMESTAMP "drengr::F_ORIGINAL_TIMESTAMP"
        F_SENT_AT "drengr::F_SENT_AT"
        F_MESSAGE_ID "drengr::F_MESSAGE_ID"
        F_NAME "drengr::F_NAME"
        F_GROUP_ID "drengr::F_GROUP_ID"
        F_PREVIOUS_ID "drengr::F_PREVIOUS_ID"
        WORDS_TYPES "drengr::WORDS_TYPES"
        WORDS_ECOMMERCE "drengr::WORDS_ECOMMERCE"
        WORDS_PRIORITY "drengr::WORDS_PRIORITY"
        WORDS_NUMERIC "drengr::WORDS_NUMERIC"
        C_APP "drengr::C_APP"
        C_OS "drengr::C_OS"
        C_DEVICE "drengr::C_DEVICE"
        C_TRAITS "drengr::C_TRAITS"
        C_LIBRARY "drengr::C_LIBRARY"

    cdef cppclass Fields "drengr::Fields":
        Element v[14]
        bint has[14]

    int el_kind "drengr::el_kind"(Element&)
    Object el_obj "drengr::el_obj"(Element&)
    Array el_arr "drengr::el_arr"(Element&)
    const char* el_str "drengr::el_str"(Element&, size_t*)
    int64_t el_i64 "drengr::el_i64"(Element&)
    uint64_t el_u64 "drengr::el_u64"(Element&)
    double el_f64 "drengr::el_f64"(Element&)
    bint el_bool "drengr::el_bool"(Element&)
    bint obj_get "drengr::obj_get"(Object&, const char*, Element*)
    int parse_body "drengr::parse_body"(
        Parser*, const char*, size_t, Element*) nogil
    const char* error_text "drengr::error_text"(int)
    void init_tables "drengr::init_tables"()
    void put_json_string "drengr::put_json_string"(Buf&, const char*, size_t)
    size_t json_string_size "drengr::json_string_size"(const char*, size_t)
    size_t utf8_prefix "drengr::utf8_prefix"(const char*, size_t, size_t)
    uint64_t hash_bytes "drengr::hash_bytes"(const char*, size_t)
    int fmt_i64 "drengr::fmt_i64"(int64_t, char*)
    int fmt_u64 "drengr::fmt_u64"(uint64_t, char*)
    int fmt_double "drengr::fmt_double"(double, char*)
    int format_ms "drengr::format_ms"(int64_t, char*)
    bint parse_ms "drengr::parse_ms"(const char*, size_t, int64_t*)
    bint normalize_ascii "drengr::normalize_ascii"(
        const char*, size_t, size_t, Buf&)
    void words_add "drengr::words_add"(int, const char*, size_t, int) except +
    int words_find "drengr::words_find"(int, const char*, size_t)
    int type_code "drengr::type_code"(const char*, size_t)
    void scan_fields "drengr::scan_fields"(Object&, Fields&)
    void scan_context "drengr::scan_context"(Object&, Fields&)


cdef extern from "Python.h":
    str PyUnicode_DecodeUTF8(const char* s, Py_ssize_t size, const char* errors)
    const char* PyUnicode_AsUTF8AndSize(object text, Py_ssize_t* size) except NULL
    void* PyUnicode_DATA(object text)  # ASCII text only: one byte per character
    Py_ssize_t PyUnicode_GET_LENGTH(object text)
    char* PyOS_double_to_string(
        double val, char format_code, int precision, int flags, int* ptype
    ) except NULL
    int Py_DTSF_ADD_DOT_0
    void PyMem_Free(void* p)


# ------------------------------------------------------------------ constants
# Everything numeric or listed comes from the contract modules, so the
# compiled module cannot drift from the twin.

BigLiteral = _mapping_py.BigLiteral
ECOMMERCE_EVENTS = _mapping_py.ECOMMERCE_EVENTS
TYPE_EVENT_NAMES = _mapping_py.TYPE_EVENT_NAMES
DROP_NOT_OBJECT = _mapping_py.DROP_NOT_OBJECT
DROP_UNKNOWN_TYPE = _mapping_py.DROP_UNKNOWN_TYPE
DROP_MISSING_ID = _mapping_py.DROP_MISSING_ID
DROP_NO_EVENT_NAME = _mapping_py.DROP_NO_EVENT_NAME
STRIP_REASONS = _mapping_py.STRIP_REASONS
_reason_order = _mapping_py._reason_order

# The rare paths: the twin's own helpers.
normalize_event_name = _mapping_py.normalize_event_name
is_pii_key = _mapping_py.is_pii_key
coerce_number_text = _mapping_py.coerce_number_text
fallback_event_id = _mapping_py.fallback_event_id
cdef object _canonical_type = routes.canonical_type

cdef Py_ssize_t MAX_DIMS = limits.MAX_DIMS
cdef Py_ssize_t MAX_MEASURES = limits.MAX_MEASURES
cdef Py_ssize_t MAX_DIM_KEY_CHARS = limits.MAX_DIM_KEY_CHARS
cdef Py_ssize_t MAX_DIM_VALUE_CHARS = limits.MAX_DIM_VALUE_CHARS
cdef Py_ssize_t MAX_EVENT_NAME_CHARS = limits.MAX_EVENT_NAME_CHARS
cdef Py_ssize_t MAX_LIBRARY_CHARS = limits.MAX_LIBRARY_CHARS
cdef Py_ssize_t MAX_STRIPPED_KEY_NAMES = limits.MAX_STRIPPED_KEY_NAMES
cdef Py_ssize_t MAX_STRIPPED_EVENTS = limits.MAX_STRIPPED_EVENTS
cdef int64_t MIN_OCCURRED_AT_MS = limits.MIN_OCCURRED_AT_MS
cdef int64_t MAX_FUTURE_MS = limits.MAX_FUTURE_MS

# Item type codes; -1 means "the body's `type` decides".
cdef enum:
    TRACK, IDENTIFY, PAGE, SCREEN, GROUP, ALIAS, OTHER_TYPE

# Drop reason codes returned by _map_item (0 means a row was appended).
cdef enum:
    MAPPED, NOT_OBJECT, UNKNOWN_TYPE, MISSING_ID, NO_EVENT_NAME

# Strip reason codes: indexes of Scratch.strips and of STRIP_REASONS.
cdef enum:
    STRIP_PII_KEY, STRIP_KEY_TRUNCATED, STRIP_VALUE_TRUNCATED
    STRIP_OVER_DIMS, STRIP_OVER_MEASURES

cdef tuple _TYPE_NAMES = ("track", "identify", "page", "screen", "group", "alias")
cdef dict _TYPE_CODES = {name: code for code, name in enumerate(_TYPE_NAMES)}
cdef tuple _EVENT_NAMES = ("",) + tuple(TYPE_EVENT_NAMES[t] for t in _TYPE_NAMES[1:])
cdef tuple _DROP_REASONS = (
    None, DROP_NOT_OBJECT, DROP_UNKNOWN_TYPE, DROP_MISSING_ID, DROP_NO_EVENT_NAME
)
cdef str _EMPTY_OBJECT = "{}"


def _add_words(int which, words, codes=None):
    for i, word in enumerate(words):
        data = word.encode("utf-8")
        words_add(which, data, len(data), -1 if codes is None else codes[i])


init_tables()
_add_words(
    WORDS_TYPES,
    list(routes.SEGMENT_TYPES),
    [_TYPE_CODES[t] for t in routes.SEGMENT_TYPES.values()],
)
_add_words(WORDS_ECOMMERCE, sorted(ECOMMERCE_EVENTS))
_add_words(WORDS_PRIORITY, limits.PRIORITY_MEASURES)
_add_words(WORDS_NUMERIC, limits.ECOMMERCE_NUMERIC_KEYS)
if len(limits.PRIORITY_MEASURES) > 4 or MAX_MEASURES > 64 or MAX_DIMS > 160:
    raise ImportError(
        "drengr.mapping._mapping_c holds 4 priority measures, 64 others, 160 dims"
    )
del _add_words


class Refused(_mapping_py.Refused):
    """simdjson refused the body; the Python twin decides whether it is JSON.

    A subclass of the twin's ``Refused``, so either name catches it.
    """


# ------------------------------------------------------------------ the parser

@cython.final
cdef class _ThreadParser:
    """One thread's simdjson parser and working memory."""

    cdef Parser* parser
    cdef Scratch* scratch
    cdef unsigned long long generation
    cdef unsigned long owner
    cdef list strip_names  # per strip reason: the first few key names, this request

    def __cinit__(self):
        self.parser = new Parser()
        self.scratch = new Scratch()
        self.owner = PyThread_get_thread_ident()
        self.strip_names = [[] for _ in STRIP_REASONS]
        self.scratch.names = <void*>self.strip_names  # lives as long as self

    def __dealloc__(self):
        del self.parser
        del self.scratch


_local = threading.local()


cdef _ThreadParser _thread_parser():
    parser = getattr(_local, "parser", None)
    if parser is None:
        parser = _local.parser = _ThreadParser()
    return <_ThreadParser>parser


# Above this size simdjson runs without the GIL (a few hundred µs).
cdef size_t _NOGIL_BYTES = 65536


@cython.final
cdef class Mapper:
    """Parses bodies and maps them to rows, the PII lists fixed at start-up."""

    cdef readonly tuple pii
    cdef readonly frozenset allow
    cdef PiiMatcher matcher
    cdef dict _pii_cache
    cdef dict _name_cache
    cdef list _names  # recent normalised event names, by hash slot
    cdef uint64_t _name_hashes[64]

    def __init__(self, pii_substrings, pii_allow=()):
        self.pii = tuple(fragment.lower() for fragment in pii_substrings)
        self.allow = frozenset(pii_allow)
        self._pii_cache = {}
        self._name_cache = {}
        self._names = [None] * 64
        for fragment in self.pii:
            data = fragment.encode("utf-8", "surrogatepass")
            self.matcher.add(data, len(data))

    def parse(self, body):
        """A ``Document``; ``InvalidJSON`` or ``Refused`` (the twin decides)."""
        cdef bytes data = body if type(body) is bytes else bytes(body)
        cdef const char* buf = data
        cdef size_t size = len(data)
        cdef _ThreadParser tp = _thread_parser()
        cdef Element root
        cdef int err
        if tp.scratch.busy:  # a finalizer run mid-map must not reuse its parser
            raise RuntimeError("Mapper.parse called while this thread maps a Document")
        tp.generation += 1  # every earlier Document of this thread is now stale
        if size == 0:
            raise InvalidJSON()
        if size >= _NOGIL_BYTES:
            with nogil:
                err = parse_body(tp.parser, buf, size, &root)
        else:
            err = parse_body(tp.parser, buf, size, &root)
        if err != SIMDJSON_SUCCESS:
            if err in (SIMDJSON_UTF8_ERROR, SIMDJSON_DEPTH_ERROR, SIMDJSON_EMPTY):
                raise InvalidJSON()
            if err == SIMDJSON_MEMALLOC:
                raise MemoryError()
            raise Refused(error_text(err).decode())
        if el_kind(root) != c'{':
            raise InvalidJSON()
        cdef Document doc = Document.__new__(Document)
        doc._tp = tp
        doc._generation = tp.generation
        doc._mapper = self
        doc._root = root
        doc._body_size = size
        doc.write_key = None
        doc.stripped_events = ()
        cdef Element key
        cdef const char* text
        cdef size_t n
        if obj_get(el_obj(root), b"writeKey", &key) and el_kind(key) == c'"':
            text = el_str(key, &n)
            if n:
                doc.write_key = PyUnicode_DecodeUTF8(text, n, NULL)
        return doc

    cdef inline int _is_pii(self, Scratch* s, const char* key, size_t n) except -1:
        """The twin's ``PiiRule.drops``: a fragment matches, the name is not allowed."""
        cdef int found = self.matcher.test_cached(key, n)
        if found < 0:
            found = self._is_pii_slow(key, n)
        if found and s.allow != NULL:
            return PyUnicode_DecodeUTF8(key, n, NULL) not in <frozenset>s.allow
        return found

    cdef int _is_pii_slow(self, const char* key, size_t n) except -1:
        """``is_pii_key`` for keys that are not ASCII (Unicode lowercasing)."""
        text = PyUnicode_DecodeUTF8(key, n, NULL)
        cached = self._pii_cache.get(text)
        if cached is None:
            cached = bool(is_pii_key(text, self.pii))
            if len(self._pii_cache) >= 4096:
                self._pii_cache.clear()
            self._pii_cache[text] = cached
        return cached is True

    cdef str _ascii_name(self, const char* name, size_t n):
        """The str of a normalised ASCII event name, shared by the events of a batch."""
        cdef uint64_t h = hash_bytes(name, n)
        cdef Py_ssize_t slot = h & 63
        cdef str cached = self._names[slot]
        if (
            cached is not None and self._name_hashes[slot] == h
            and PyUnicode_GET_LENGTH(cached) == <Py_ssize_t>n
            and memcmp(PyUnicode_DATA(cached), name, n) == 0
        ):
            return cached
        cached = PyUnicode_DecodeUTF8(name, n, NULL)
        self._names[slot] = cached
        self._name_hashes[slot] = h
        return cached

    cdef str _normalize_slow(self, str raw):
        name = self._name_cache.get(raw)
        if name is None:
            name = normalize_event_name(raw)
            if len(self._name_cache) >= 4096:
                self._name_cache.clear()
            self._name_cache[raw] = name
        return name


# ------------------------------------------------------------------ JSON text

cdef int _put_number(Buf* out, Element value, int kind) except -1:
    """str(int) / repr(float) of a number element."""
    cdef int n
    cdef double number
    cdef char* slow
    if not out.reserve(32):
        return 0  # out.failed is checked once per item
    if kind == c'l':
        n = fmt_i64(el_i64(value), out.p + out.n)
    elif kind == c'u':
        n = fmt_u64(el_u64(value), out.p + out.n)
    else:
        number = el_f64(value)
        n = fmt_double(number, out.p + out.n)
        if n == 0:
            slow = PyOS_double_to_string(number, c'r', 0, Py_DTSF_ADD_DOT_0, NULL)
            out.put(slow, strlen(slow))
            PyMem_Free(slow)
            return 0
    out.n += n
    return 0


cdef int _put_scalar(Buf* out, Element value, int kind) except -1:
    """A string, number, boolean or null as JSON text."""
    cdef const char* p
    cdef size_t n
    if kind == c'"':
        p = el_str(value, &n)
        put_json_string(out[0], p, n)
    elif kind == c't':
        if el_bool(value):
            out.put("true", 4)
        else:
            out.put("false", 5)
    elif kind == c'n':
        out.put("null", 4)
    else:
        _put_number(out, value, kind)
    return 0


cdef int _strip(Scratch* s, int reason, const char* key, size_t n) except -1:
    """The twin's ``Strips.note``: count a key left out; keep a few names."""
    cdef list names
    cdef list item
    cdef Buf* last = &s.strip_last[reason]
    s.strips[reason] += 1
    if s.item != NULL:  # the twin's per-item names, for the first events that lose keys
        item = <list>s.item
        why = STRIP_REASONS[reason]
        pair = (why,
                PyUnicode_DecodeUTF8(key, utf8_prefix(key, n, MAX_DIM_KEY_CHARS), NULL))
        same_reason = 0
        for other in item:
            if (<tuple>other)[0] == why:
                same_reason += 1
        if same_reason < MAX_STRIPPED_KEY_NAMES and pair not in item:
            item.append(pair)
    if n and last.n == n and memcmp(last.p, key, n) == 0:
        return 0  # the same key as the last one (PII in every item of a batch)
    last.clear()
    last.put(key, n)
    names = <list>(<object>s.names)[reason]
    if len(names) < MAX_STRIPPED_KEY_NAMES:
        name = PyUnicode_DecodeUTF8(key, utf8_prefix(key, n, MAX_DIM_KEY_CHARS), NULL)
        if name not in names:
            names.append(name)
    return 0


cdef inline int _start_item(Scratch* s, list item, list events) except -1:
    """The twin's ``Strips.start_item``: this item's names, while events has room."""
    if len(events) < MAX_STRIPPED_EVENTS:
        del item[:]
        s.item = <void*>item
    else:
        s.item = NULL
    return 0


cdef inline int _end_item(Scratch* s, list item, list events, list rows) except -1:
    """The twin's ``Strips.end_item``: the last row's item, named if it lost keys."""
    if s.item != NULL and len(item):
        event_id = (<tuple>rows[len(rows) - 1])[1]
        if len(item) == 1:  # the usual case, and no sort to call
            events.append((event_id, tuple(item)))
        else:
            events.append((event_id, tuple(sorted(item, key=_reason_order))))
    return 0


cdef object _stripped(Scratch* s):
    """The twin's ``Strips.result()``, and both reset for the next request."""
    cdef int reason
    cdef list names = <list>(<object>s.names)
    result = {}
    for reason in range(len(STRIP_REASONS)):
        if s.strips[reason]:
            result[STRIP_REASONS[reason]] = (s.strips[reason], tuple(names[reason]))
            s.strips[reason] = 0
        s.strip_last[reason].clear()
        del names[reason][:]
    return result


cdef size_t _scalar_size(Element value, int kind) except 0:
    """Bytes of a string, number, boolean or null as JSON text."""
    cdef const char* p
    cdef size_t n
    cdef char text[32]
    cdef char* slow
    if kind == c'"':
        p = el_str(value, &n)
        return json_string_size(p, n)
    if kind == c't':
        return 4 if el_bool(value) else 5
    if kind == c'n':
        return 4
    if kind == c'l':
        return fmt_i64(el_i64(value), text)
    if kind == c'u':
        return fmt_u64(el_u64(value), text)
    n = fmt_double(el_f64(value), text)
    if n:
        return n
    slow = PyOS_double_to_string(el_f64(value), c'r', 0, Py_DTSF_ADD_DOT_0, NULL)
    n = strlen(slow)
    PyMem_Free(slow)
    return n


cdef size_t _json(Scratch* s, Element value, Buf* out, Mapper mapper, bint drop_pii,
                  bint exact, size_t limit) except 0:
    """The twin's ``json_text``: written to ``out``, or with ``out`` NULL, measured.

    Written: compact, first key wins, PII keys dropped when ``drop_pii``
    (counted as strips); returns 1. Measured: the UTF-8 size of
    ``json_text(value, None)``, returned once past ``limit`` at the latest;
    ``exact=False`` is a cheap upper bound instead (duplicate keys counted,
    each double as 24 bytes: the longest repr, -2.2250738585072014e-308).
    Iterative over ``s.frames`` (one heap frame per level), not recursive.
    """
    cdef bint dedup = exact or out != NULL
    cdef size_t depth = 0
    cdef size_t size = 0  # stays 0 while writing: never past the limit
    cdef int kind
    cdef Frame* f
    cdef Object obj
    cdef Array arr
    cdef const char* p
    cdef size_t n
    cdef bint found
    while True:
        kind = el_kind(value)
        if kind == c'{' or kind == c'[':
            f = s.frames.at(depth)
            if f == NULL:
                raise MemoryError()
            f.first = True
            f.is_object = kind == c'{'
            if f.is_object:
                obj = el_obj(value)
                if dedup and f.seen.start(obj.size()) < 0:
                    raise MemoryError()
                f.it = obj.begin()
                f.end = obj.end()
            else:
                arr = el_arr(value)
                f.ait = arr.begin()
                f.aend = arr.end()
            if out != NULL:
                out.putc(c'{' if f.is_object else c'[')
            else:
                size += 2  # the brackets; each member or element adds its comma
            depth += 1
        elif out != NULL:
            _put_scalar(out, value, kind)
        elif exact or kind != c'd':
            size += _scalar_size(value, kind)
        else:
            size += 24
        if size > limit:
            return size
        # The next value, closing the containers that are done.
        while depth:
            f = s.frames.at(depth - 1)
            if f.is_object:
                found = False
                while f.it != f.end:
                    p = f.it.key_c_str()
                    n = f.it.key_length()
                    if not dedup or f.seen.add(p, n):
                        if not (drop_pii and mapper._is_pii(s, p, n)):
                            found = True
                            break
                        _strip(s, STRIP_PII_KEY, p, n)
                    inc(f.it)
                if found:
                    if out == NULL:
                        size += json_string_size(p, n) + 1 + (0 if f.first else 1)
                    else:
                        if not f.first:
                            out.putc(c',')
                        put_json_string(out[0], p, n)
                        out.putc(c':')
                    f.first = False
                    value = f.it.value()
                    inc(f.it)
                    break
                if out != NULL:
                    out.putc(c'}')
            else:
                if f.ait != f.aend:
                    if not f.first:
                        if out == NULL:
                            size += 1
                        else:
                            out.putc(c',')
                    f.first = False
                    value = deref(f.ait)
                    inc(f.ait)
                    break
                if out != NULL:
                    out.putc(c']')
            depth -= 1
        if depth == 0:
            return 1 if out != NULL else size


cdef inline int _json_text(Scratch* s, Buf* out, Element value, Mapper mapper,
                           bint drop_pii) except -1:
    """``value`` as the twin's ``json_text``, appended to ``out``."""
    _json(s, value, out, mapper, drop_pii, True, SIZE_MAX)
    return 0


cdef inline size_t _json_size(Scratch* s, Element value, size_t limit,
                              bint exact) except 0:
    """UTF-8 size of the twin's ``json_text(value, None)``, or a bound (``_json``)."""
    return _json(s, value, NULL, None, False, exact, limit)


cdef bint _scalar_text(Scratch* s, Buf* out, Element value, Mapper mapper) except -1:
    """The twin's ``scalar_text`` appended to ``out``; False for null (absent)."""
    cdef int kind = el_kind(value)
    cdef const char* p
    cdef size_t n
    if kind == c'n':
        return False
    if kind == c'"':
        p = el_str(value, &n)
        out.put(p, n)
    elif kind == c't':
        if el_bool(value):
            out.put("true", 4)
        else:
            out.put("false", 5)
    else:
        _json_text(s, out, value, mapper, True)
    return True


cdef object _id_text(Fields* fields, int field):
    """The twin's ``id_text``: strings as-is, numbers as text; null, "" etc.: None."""
    cdef Element value
    cdef const char* p
    cdef size_t n
    cdef int kind
    cdef char text[32]
    if not fields.has[field]:
        return None
    value = fields.v[field]
    kind = el_kind(value)
    if kind == c'"':
        p = el_str(value, &n)
        return PyUnicode_DecodeUTF8(p, n, NULL) if n else None
    if kind == c'l':
        n = fmt_i64(el_i64(value), text)
    elif kind == c'u':
        n = fmt_u64(el_u64(value), text)
    elif kind == c'd':
        n = fmt_double(el_f64(value), text)
        if n == 0:
            return repr(el_f64(value))
    else:
        return None
    return PyUnicode_DecodeUTF8(text, n, NULL)


cdef inline bint _timestamp(Fields* fields, int field, int64_t* ms) noexcept:
    """parse_ms of a member: False when absent, not a string or not a timestamp."""
    cdef const char* p
    cdef size_t n
    if not fields.has[field] or el_kind(fields.v[field]) != c'"':
        return False
    p = el_str(fields.v[field], &n)
    return parse_ms(p, n, ms)


cdef inline bint _part(Fields* parts, int part, Object* out) noexcept:
    """``_get_object`` over a scanned member: True when it is there and an object."""
    if parts.has[part] and el_kind(parts.v[part]) == c'{':
        out[0] = el_obj(parts.v[part])
        return True
    return False


# ------------------------------------------------------------------ dims and measures

cdef int _put_dim(Scratch* s, const char* key, size_t key_size,
                  const char* value, size_t value_size) except -1:
    """One reserved ``"key":"value"`` member of dims (value cut to 256 characters)."""
    cdef size_t cut = utf8_prefix(value, value_size, MAX_DIM_VALUE_CHARS)
    if cut < value_size:
        _strip(s, STRIP_VALUE_TRUNCATED, key, key_size)
    if s.n_dim_entries:
        s.dims.putc(c',')
    put_json_string(s.dims, key, key_size)
    s.dims.putc(c':')
    put_json_string(s.dims, value, cut)
    s.n_dim_entries += 1
    s.kept.add(key, key_size, hash_bytes(key, key_size), True)
    return 0


cdef int _reserved(Scratch* s, const char* key, Fields* fields, int field,
                   Mapper mapper) except -1:
    """A reserved dim set by the mapper from a top-level member; 1 when it was set."""
    if not fields.has[field]:
        return 0
    s.tmp.clear()
    if _scalar_text(s, &s.tmp, fields.v[field], mapper):
        _put_dim(s, key, strlen(key), s.tmp.p, s.tmp.n)
        return 1
    return 0


cdef int _emit(Scratch* s, Mapper mapper, const char* key, size_t key_size, bint stable,
               Element value, bint ecommerce) except -1:
    """The twin's ``emit``: one flattened property into measures or dims.

    ``stable``: ``key`` lives as long as the document (not a scratch buffer).
    """
    cdef int kind = el_kind(value)
    cdef uint64_t h
    cdef const char* p
    cdef size_t n
    cdef int slot
    cdef bint is_number = False
    cdef Buf* entry
    cdef Py_ssize_t size
    cdef size_t cut
    if kind == c'n':
        return 0
    cut = utf8_prefix(key, key_size, MAX_DIM_KEY_CHARS)
    if cut < key_size:
        key_size = cut
        _strip(s, STRIP_KEY_TRUNCATED, key, key_size)
    h = hash_bytes(key, key_size)
    if s.kept.has(key, key_size, h):
        return 0
    if kind == c'l' or kind == c'u' or kind == c'd':
        s.num.clear()
        _put_number(&s.num, value, kind)
        is_number = True
    elif ecommerce and kind == c'"' and words_find(WORDS_NUMERIC, key, key_size) >= 0:
        p = el_str(value, &n)
        number = coerce_number_text(PyUnicode_DecodeUTF8(p, n, NULL))
        if number is not None:
            p = PyUnicode_AsUTF8AndSize(number, &size)
            s.num.clear()
            s.num.put(p, size)
            is_number = True
    if is_number:
        slot = words_find(WORDS_PRIORITY, key, key_size)
        if slot >= 0:
            entry = &s.priority[slot]
        elif s.n_others < MAX_MEASURES:
            entry = &s.others
            if s.n_others:
                entry.putc(c',')
        else:
            _strip(s, STRIP_OVER_MEASURES, key, key_size)
            return 0
        put_json_string(entry[0], key, key_size)
        entry.putc(c':')
        entry.put(s.num.p, s.num.n)
        if slot < 0:
            s.others_end[s.n_others] = s.others.n
            s.n_others += 1
        s.kept.add(key, key_size, h, stable)
        return 0
    if s.n_dims >= MAX_DIMS:
        _strip(s, STRIP_OVER_DIMS, key, key_size)
        return 0
    if kind != c'"' and kind != c't':  # rendered first: it may strip keys of its own
        s.tmp.clear()
        _json_text(s, &s.tmp, value, mapper, True)
    if s.n_dim_entries:
        s.dims.putc(c',')
    put_json_string(s.dims, key, key_size)
    s.dims.putc(c':')
    if kind == c'"':
        p = el_str(value, &n)
        cut = utf8_prefix(p, n, MAX_DIM_VALUE_CHARS)
        if cut < n:
            _strip(s, STRIP_VALUE_TRUNCATED, key, key_size)
        put_json_string(s.dims, p, cut)
    elif kind == c't':
        if el_bool(value):
            s.dims.put('"true"', 6)
        else:
            s.dims.put('"false"', 7)
    else:
        n = utf8_prefix(s.tmp.p, s.tmp.n, MAX_DIM_VALUE_CHARS)
        if n < s.tmp.n:
            _strip(s, STRIP_VALUE_TRUNCATED, key, key_size)
        put_json_string(s.dims, s.tmp.p, n)
    s.n_dim_entries += 1
    s.n_dims += 1
    s.kept.add(key, key_size, h, stable)
    return 0


cdef int _properties(Scratch* s, Mapper mapper, Object source,
                     bint ecommerce) except -1:
    """Flatten one level: ``{"a": {"b": 1}}`` → ``a.b``; PII keys dropped first."""
    cdef Object.iterator it = source.begin()
    cdef Object.iterator end = source.end()
    cdef Object.iterator sub_it, sub_end
    cdef Object sub
    cdef Element value
    cdef KeySet* seen = &s.seen
    cdef KeySet sub_seen
    cdef const char* key
    cdef uint32_t key_size
    cdef const char* sub_key
    cdef uint32_t sub_key_size
    if seen.start(source.size()) < 0:
        raise MemoryError()
    while it != end:
        key = it.key_c_str()
        key_size = it.key_length()
        value = it.value()
        inc(it)
        if not seen.add(key, key_size):
            continue
        if mapper._is_pii(s, key, key_size):
            _strip(s, STRIP_PII_KEY, key, key_size)
            continue
        if el_kind(value) != c'{':
            _emit(s, mapper, key, key_size, True, value, ecommerce)
            continue
        sub = el_obj(value)
        if sub_seen.start(sub.size()) < 0:
            raise MemoryError()
        sub_it = sub.begin()
        sub_end = sub.end()
        while sub_it != sub_end:
            sub_key = sub_it.key_c_str()
            sub_key_size = sub_it.key_length()
            value = sub_it.value()
            inc(sub_it)
            if not sub_seen.add(sub_key, sub_key_size):
                continue
            s.key.clear()
            s.key.put(key, key_size)
            s.key.putc(c'.')
            s.key.put(sub_key, sub_key_size)
            if mapper._is_pii(s, sub_key, sub_key_size):
                _strip(s, STRIP_PII_KEY, s.key.p, s.key.n)
                continue
            _emit(s, mapper, s.key.p, s.key.n, False, value, ecommerce)
    return 0


cdef void _measures_text(Scratch* s) noexcept:
    """Priority measures in their fixed order, then others in input order; 20 in all."""
    cdef int i
    cdef int n_priority = 0
    cdef Py_ssize_t room
    cdef Buf* out = &s.measures
    out.clear()
    out.putc(c'{')
    for i in range(4):
        if s.priority[i].n:
            if n_priority:
                out.putc(c',')
            out.put(s.priority[i].p, s.priority[i].n)
            n_priority += 1
    room = MAX_MEASURES - n_priority
    if room > s.n_others:
        room = s.n_others
    else:  # priority measures came after others had filled up: those are cut
        s.strips[STRIP_OVER_MEASURES] += s.n_others - room
    if room > 0:
        if n_priority:
            out.putc(c',')
        out.put(s.others.p, s.others_end[room - 1])
    out.putc(c'}')


cdef inline bint _oversized(Scratch* s, Element item, size_t limit) except -1:
    """The cheap bound first; the exact size (first keys, repr) only near the limit."""
    return (
        _json_size(s, item, limit, False) > limit
        and _json_size(s, item, limit, True) > limit
    )


# ------------------------------------------------------------------ the document

@cython.final
cdef class Document:
    """One parsed request body, valid until its thread's parser parses another."""

    cdef _ThreadParser _tp
    cdef unsigned long long _generation
    cdef Mapper _mapper
    cdef Element _root
    cdef Py_ssize_t _body_size
    cdef readonly object write_key
    # After map: the first few stored events that lost keys,
    # (event_id, ((reason, key name), ...)).
    cdef readonly object stripped_events

    cdef int _check(self) except -1:
        if self._tp is None:
            raise RuntimeError("a Document comes from Mapper.parse")
        if PyThread_get_thread_ident() != self._tp.owner:
            raise RuntimeError("a Document must be used on the thread that parsed it")
        if self._tp.generation != self._generation:
            raise RuntimeError(
                "this Document is stale: its thread's parser parsed another body since"
            )
        return 0

    cdef bint _batch(self, single_type, Array* items) noexcept:
        """The twin's ``_items``: the batch array, or False for [root]."""
        cdef Element batch
        if single_type is None and obj_get(el_obj(self._root), b"batch", &batch):
            if el_kind(batch) == c'[':
                items[0] = el_arr(batch)
                return True
        return False

    def item_count(self, single_type):
        cdef Array items
        self._check()
        return items.size() if self._batch(single_type, &items) else 1

    def has_oversized_item(self, single_type, Py_ssize_t limit):
        """Whether any item's compact JSON is over ``limit`` UTF-8 bytes."""
        cdef Array items
        cdef Array.iterator it, end
        cdef Scratch* s
        cdef bint batch
        self._check()
        s = self._tp.scratch
        if s.busy:
            raise RuntimeError("has_oversized_item called while this thread maps")
        batch = self._batch(single_type, &items)
        if limit < 0:
            return items.size() > 0 if batch else True
        # Compact text outgrows its source only through doubles: `,1e15` (5
        # bytes) becomes `,1000000000000000.0` (19), the worst ratio; strings,
        # keys, ints and literals never grow. So no item passes 4 × the body.
        if self._body_size * 4 <= limit:
            return False
        if not batch:
            return _oversized(s, self._root, limit)
        it = items.begin()
        end = items.end()
        while it != end:
            if _oversized(s, deref(it), limit):
                return True
            inc(it)
        return False

    def map(self, single_type, int64_t received_at_ms, tenant_id, pii_allow=()):
        """Rows of accepted items; dropped items and stripped keys by reason.

        ``pii_allow``: the tenant's exact key names kept although they hold a PII
        fragment.
        """
        cdef Array items
        cdef Array.iterator it, end
        cdef Scratch* s
        cdef int single_code = -1
        cdef int reason
        cdef int64_t batch_sent_at = 0
        cdef bint has_batch_sent_at
        cdef char text[48]
        cdef Fields fields, context
        cdef int n
        self._check()
        s = self._tp.scratch
        if s.busy:
            raise RuntimeError("Document.map is not re-entrant")
        if single_type:
            single_code = _TYPE_CODES.get(single_type, OTHER_TYPE)
        allow = self._mapper.allow.union(pii_allow) if pii_allow else self._mapper.allow
        s.busy = True
        # `allow` outlives the map: a local of this call.
        s.allow = <void*>allow if allow else NULL
        _stripped(s)  # nothing left over from a map that raised
        s.lib.clear()
        library = [None]  # the last library text, reused while the bytes repeat
        item = []  # s.item points here: a local of this call outlives the map
        events = []
        try:
            scan_fields(el_obj(self._root), fields)
            has_batch_sent_at = _timestamp(&fields, F_SENT_AT, &batch_sent_at)
            n = format_ms(received_at_ms, text)
            received_at = PyUnicode_DecodeUTF8(text, n, NULL)
            rows = []
            dropped = {}
            if not self._batch(single_type, &items):
                _start_item(s, item, events)
                reason = _map_item(
                    s, self._mapper, self._root, &fields, &context, single_code,
                    single_type, has_batch_sent_at, batch_sent_at, received_at_ms,
                    received_at, tenant_id, rows, library,
                )
                if reason != MAPPED:
                    dropped[_DROP_REASONS[reason]] = 1
                else:
                    _end_item(s, item, events, rows)
                self.stripped_events = tuple(events)
                return rows, dropped, _stripped(s)
            it = items.begin()
            end = items.end()
            while it != end:
                _start_item(s, item, events)
                reason = _map_item(
                    s, self._mapper, deref(it), &fields, &context, single_code,
                    single_type, has_batch_sent_at, batch_sent_at, received_at_ms,
                    received_at, tenant_id, rows, library,
                )
                if reason != MAPPED:
                    name = _DROP_REASONS[reason]
                    dropped[name] = dropped.get(name, 0) + 1
                else:
                    _end_item(s, item, events, rows)
                inc(it)
            self.stripped_events = tuple(events)
            return rows, dropped, _stripped(s)
        finally:
            s.item = NULL
            s.allow = NULL
            s.busy = False


cdef int _map_item(
    Scratch* s, Mapper mapper, Element item, Fields* fields, Fields* context,
    int single_code, object single_type, bint has_batch_sent_at,
    int64_t batch_sent_at, int64_t received_at_ms, str received_at,
    object tenant_id, list rows, list library,
) except -1:
    """The twin's ``_map_item``: appends the row and returns MAPPED, or why not."""
    cdef Object obj, source, part
    cdef Element value
    cdef bint has_context, has_source = False
    cdef int named
    cdef bint ecommerce = False
    cdef int code = single_code
    cdef const char* p
    cdef size_t n
    cdef size_t mark, start
    cdef bint have_os
    cdef int64_t timestamp, sent_at, original, occurred
    cdef bint has_timestamp, has_sent_at, has_original
    cdef char text[48]
    if el_kind(item) != c'{':
        return NOT_OBJECT
    obj = el_obj(item)
    scan_fields(obj, fields[0])
    if code < 0:
        code = _body_type(fields)
        if code < 0:
            return UNKNOWN_TYPE
    external_id = _id_text(fields, F_USER_ID)
    install_id = _id_text(fields, F_ANONYMOUS_ID)
    if install_id is None:
        install_id = external_id
        if install_id is None:
            return MISSING_ID
    s.start_item()
    has_context = fields.has[F_CONTEXT] and el_kind(fields.v[F_CONTEXT]) == c'{'
    if has_context:
        scan_context(el_obj(fields.v[F_CONTEXT]), context[0])

    if code == TRACK:
        if not fields.has[F_EVENT] or el_kind(fields.v[F_EVENT]) != c'"':
            return NO_EVENT_NAME
        p = el_str(fields.v[F_EVENT], &n)
        if normalize_ascii(p, n, MAX_EVENT_NAME_CHARS, s.name):
            if s.name.n == 0:
                return NO_EVENT_NAME
            event_name = mapper._ascii_name(s.name.p, s.name.n)
            if s.name.n != n or memcmp(s.name.p, p, n) != 0:
                _put_dim(s, "_source_event_name", 18, p, n)
            ecommerce = words_find(WORDS_ECOMMERCE, s.name.p, s.name.n) >= 0
        else:
            raw_name = PyUnicode_DecodeUTF8(p, n, NULL)
            event_name = mapper._normalize_slow(raw_name)
            if not event_name:
                return NO_EVENT_NAME
            if event_name != raw_name:
                _put_dim(s, "_source_event_name", 18, p, n)
            ecommerce = event_name in ECOMMERCE_EVENTS
        if fields.has[F_PROPERTIES] and el_kind(fields.v[F_PROPERTIES]) == c'{':
            source = el_obj(fields.v[F_PROPERTIES])
            has_source = True
    elif code == OTHER_TYPE:
        raise KeyError(single_type)  # as the twin's TYPE_EVENT_NAMES[event_type]
    else:
        event_name = _EVENT_NAMES[code]
        if code == PAGE or code == SCREEN:
            named = _reserved(s, "name", fields, F_NAME, mapper)
            if fields.has[F_PROPERTIES] and el_kind(fields.v[F_PROPERTIES]) == c'{':
                source = el_obj(fields.v[F_PROPERTIES])
                has_source = True
                # @jitsu/js sends a page's name only as properties.name
                if not named and obj_get(source, b"name", &value):
                    s.tmp.clear()
                    if _scalar_text(s, &s.tmp, value, mapper):
                        _put_dim(s, "name", 4, s.tmp.p, s.tmp.n)
        elif code == IDENTIFY or code == GROUP:
            # `traits or context.traits`: an empty top-level traits falls through
            if fields.has[F_TRAITS] and el_kind(fields.v[F_TRAITS]) == c'{':
                source = el_obj(fields.v[F_TRAITS])
                has_source = source.size() > 0
            if not has_source and has_context:
                has_source = _part(context, C_TRAITS, &source)
            if code == GROUP:
                _reserved(s, "group_id", fields, F_GROUP_ID, mapper)
        else:
            _reserved(s, "previous_id", fields, F_PREVIOUS_ID, mapper)

    if has_context:
        if _part(context, C_APP, &part) and obj_get(part, b"version", &value):
            s.tmp.clear()
            if _scalar_text(s, &s.tmp, value, mapper):
                _put_dim(s, "app_version", 11, s.tmp.p, s.tmp.n)
        if _part(context, C_OS, &part):
            # An empty name or version is absent (RudderStack's browser SDKs send both).
            s.tmp.clear()
            have_os = obj_get(part, b"name", &value) and _scalar_text(
                s, &s.tmp, value, mapper
            ) and s.tmp.n > 0
            if obj_get(part, b"version", &value):
                mark = s.tmp.n
                if have_os:
                    s.tmp.putc(c' ')
                start = s.tmp.n
                if _scalar_text(s, &s.tmp, value, mapper) and s.tmp.n > start:
                    have_os = True
                else:
                    s.tmp.n = mark
            if have_os:
                _put_dim(s, "os", 2, s.tmp.p, s.tmp.n)
        if _part(context, C_DEVICE, &part) and obj_get(part, b"model", &value):
            s.tmp.clear()
            if _scalar_text(s, &s.tmp, value, mapper):
                _put_dim(s, "device_model", 12, s.tmp.p, s.tmp.n)

    if has_source:
        _properties(s, mapper, source, ecommerce)
    s.dims.putc(c'}')
    _measures_text(s)
    if s.failed():
        raise MemoryError()
    dims = (
        _EMPTY_OBJECT if s.dims.n == 2
        else PyUnicode_DecodeUTF8(s.dims.p, s.dims.n, NULL)
    )
    measures = (
        _EMPTY_OBJECT if s.measures.n == 2
        else PyUnicode_DecodeUTF8(s.measures.p, s.measures.n, NULL)
    )

    has_timestamp = _timestamp(fields, F_TIMESTAMP, &timestamp)
    has_original = _timestamp(fields, F_ORIGINAL_TIMESTAMP, &original)
    has_sent_at = _timestamp(fields, F_SENT_AT, &sent_at)
    if not has_sent_at:
        has_sent_at = has_batch_sent_at
        sent_at = batch_sent_at
    if has_timestamp:
        occurred = timestamp
    elif has_sent_at and has_original:
        # The client's clock may be off; its own sentAt - originalTimestamp
        # is the event's age, which our clock can trust.
        occurred = received_at_ms - (sent_at - original)
    elif has_original:
        occurred = original
    else:
        occurred = received_at_ms
    if occurred < MIN_OCCURRED_AT_MS:
        occurred = MIN_OCCURRED_AT_MS
    if occurred > received_at_ms + MAX_FUTURE_MS:
        occurred = received_at_ms + MAX_FUTURE_MS

    event_id = _id_text(fields, F_MESSAGE_ID)
    if event_id is None:
        event_id = fallback_event_id(
            external_id or install_id, event_name, _raw_timestamp(fields, received_at)
        )
    rows.append((
        tenant_id, event_id, event_name,
        single_type if single_code >= 0 else _TYPE_NAMES[code],
        external_id, install_id,
        PyUnicode_DecodeUTF8(text, format_ms(occurred, text), NULL),
        received_at, dims, measures,
        _library(s, context, library) if has_context else None,
    ))
    return MAPPED


cdef object _library(Scratch* s, Fields* context, list last):
    """The twin's ``_library``: "name version" of ``context.library``, cut to 64.

    ``last[0]`` is the text of the previous item, whose bytes ``s.lib`` holds:
    a batch from one SDK builds the string once.
    """
    cdef Object part
    cdef Element value
    cdef const char* p
    cdef size_t n
    if not _part(context, C_LIBRARY, &part) or not obj_get(part, b"name", &value):
        return None
    if el_kind(value) != c'"':
        return None
    p = el_str(value, &n)
    if n == 0:
        return None
    s.tmp.clear()
    s.tmp.put(p, n)
    if obj_get(part, b"version", &value) and el_kind(value) == c'"':
        p = el_str(value, &n)
        if n:
            s.tmp.putc(c' ')
            s.tmp.put(p, n)
    n = utf8_prefix(s.tmp.p, s.tmp.n, MAX_LIBRARY_CHARS)
    if last[0] is not None and n == s.lib.n and memcmp(s.tmp.p, s.lib.p, n) == 0:
        return last[0]
    s.lib.clear()
    s.lib.put(s.tmp.p, n)
    last[0] = PyUnicode_DecodeUTF8(s.tmp.p, n, NULL)
    return last[0]


cdef int _body_type(Fields* fields) except -2:
    """``canonical_type(item.get("type"))`` as a type code, -1 when unrecognised."""
    cdef const char* p
    cdef size_t n
    cdef int code
    if not fields.has[F_TYPE] or el_kind(fields.v[F_TYPE]) != c'"':
        return -1
    p = el_str(fields.v[F_TYPE], &n)
    code = type_code(p, n)
    if code != -2:
        return code
    name = _canonical_type(PyUnicode_DecodeUTF8(p, n, NULL))  # e.g. the Kelvin sign
    return -1 if name is None else _TYPE_CODES[name]


cdef str _raw_timestamp(Fields* fields, str received_at):
    """The fallback hash's raw timestamp: timestamp, else originalTimestamp, as str."""
    cdef const char* p
    cdef size_t n
    cdef int field
    for field in (F_TIMESTAMP, F_ORIGINAL_TIMESTAMP):
        if fields.has[field] and el_kind(fields.v[field]) == c'"':
            p = el_str(fields.v[field], &n)
            return PyUnicode_DecodeUTF8(p, n, NULL)
    return received_at
