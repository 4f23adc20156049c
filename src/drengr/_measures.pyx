# cython: language_level=3, boundscheck=False, wraparound=False
"""The read side's passes over stored rows, compiled: the rollups' measures' sums (what SQLite's
``json_each`` and ``sum()`` give, about ten times faster), and the users file's part
(``UserRows``). ``_measures_py.py`` is the twin.

The read side's builder adds each stored event's measures (``{"revenue":42.5,"items":2}``)
to its tenant's, minute's and event name's sums. In SQL (``json_each`` in a ``GROUP BY``) that
was ~7.5 µs a row for five measures, two thirds of all its work. Here the writer's compact
objects are read in one pass: keys without escapes, numbers as JSON writes them. Anything
else in a row (an escape, a string or nested value, text that is not JSON) hands that row to
the twin's ``numeric_pairs``, so the two give the same sums.

``UserRows`` indexes the rows a writer committed, from memory, for the users file: a sort and
a B-tree entry per event in SQL (~2.5 µs a row) become a dict look-up or two (~0.3 µs).
"""

cimport cython
from cpython.ref cimport PyObject
from cpython.unicode cimport PyUnicode_AsUTF8AndSize, PyUnicode_DecodeUTF8
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memcmp

from ._measures_py import numeric_pairs


cdef extern from "Python.h":
    double PyOS_string_to_double(const char *s, char **endptr, PyObject *overflow_exception) except? -1.0

cdef extern from *:
    bint add_overflow "__builtin_add_overflow"(int64_t a, int64_t b, int64_t *out) nogil

cdef extern from "float.h":
    int FLT_EVAL_METHOD  # 0: a double's arithmetic is rounded to a double (SSE2, NEON), none in excess

# 10**0 … 10**22: each a double exactly (10**22 = 2**22 * 5**22, and 5**22 < 2**53).
cdef double _POWERS[23]
for _i in range(23):
    _POWERS[_i] = float(10 ** _i)
cdef uint64_t _EXACT = 9_007_199_254_740_992  # 2**53: a mantissa at most this is a double exactly


cdef class _Total:
    """One measure's sum as SQLite's ``sum()`` keeps it: an integer while every value is one and the
    sum fits in 64 bits, then a real (``_measures_py.add_total``)."""

    cdef bint started
    cdef bint real
    cdef int64_t whole
    cdef double value

    cdef inline void add_whole(self, int64_t number):
        cdef int64_t out
        if not self.started:
            self.started = True
            self.whole = number
        elif self.real:
            self.value += <double>number
        elif add_overflow(self.whole, number, &out):
            self.real = True
            self.value = <double>self.whole + <double>number
        else:
            self.whole = out

    cdef inline void add_real(self, double number):
        if not self.started:
            self.started = self.real = True
            self.value = number
            return
        if not self.real:
            self.real = True
            self.value = <double>self.whole
        self.value += number

    cdef object result(self):
        return self.value if self.real else self.whole


cdef inline const char *_space(const char *p, const char *end) noexcept:
    while p < end and (p[0] == b' ' or p[0] == b'\t' or p[0] == b'\n' or p[0] == b'\r'):
        p += 1
    return p


cdef inline const char *_digits(const char *p, const char *end) noexcept:
    while p < end and b'0' <= p[0] <= b'9':
        p += 1
    return p


@cython.cdivision(True)  # no zero check: a power of ten is never 0
cdef inline bint _exact_real(const char *p, const char *end, double *out) noexcept:
    """A JSON number's value, when its digits make a mantissa of 53 bits at most and its power of ten
    is within 22: then one rounded product or quotient of two exact doubles is the nearest double,
    as Python's ``float()`` gives it (Clinger's fast path). False: too long or too far (``float()``'s
    own reader then), or the platform rounds with excess precision."""
    cdef bint negative = p[0] == b'-'
    cdef uint64_t mantissa = 0
    cdef int significant = 0, power = 0, exponent = 0
    cdef bint fraction = False, exponent_negative = False
    cdef double value
    if FLT_EVAL_METHOD != 0:
        return False
    if negative:
        p += 1
    while p < end and (b'0' <= p[0] <= b'9' or p[0] == b'.'):  # the caller read it: one '.' at most
        if p[0] == b'.':
            fraction = True
        else:
            if mantissa or p[0] != b'0':  # leading zeros are not significant
                significant += 1
                if significant > 19:  # past 64 bits, maybe
                    return False
                mantissa = mantissa * 10 + <uint64_t>(p[0] - 48)
            power -= fraction
        p += 1
    if p < end and (p[0] == b'e' or p[0] == b'E'):
        p += 1
        if p < end and (p[0] == b'+' or p[0] == b'-'):
            exponent_negative = p[0] == b'-'
            p += 1
        while p < end and b'0' <= p[0] <= b'9':
            if exponent > 10_000:
                return False
            exponent = exponent * 10 + (p[0] - 48)
            p += 1
    power += -exponent if exponent_negative else exponent
    if mantissa > _EXACT:
        return False
    if mantissa == 0:
        value = 0.0
    elif 0 <= power <= 22:
        value = <double>mantissa * _POWERS[power]
    elif -22 <= power < 0:
        value = <double>mantissa / _POWERS[-power]
    else:
        return False
    out[0] = -value if negative else value  # -0.0 too
    return True


cdef class _Parse:
    """One row's pairs, read by ``read``: keys (reused from the row before where their bytes agree)
    and numbers, each whole (``wholes``) or real (``reals``)."""

    cdef list keys
    cdef list last_keys
    cdef int count
    cdef int64_t wholes[64]
    cdef double reals[64]
    cdef bint is_real[64]

    def __cinit__(self):
        self.keys = []
        self.last_keys = []

    cdef bint read(self, str measures) except -1:
        """True: ``measures`` is a flat object of numbers with plain keys, read into the pairs;
        False: anything else (the twin reads it)."""
        cdef Py_ssize_t size
        cdef const char *p = PyUnicode_AsUTF8AndSize(measures, &size)  # a lone surrogate: raises
        cdef const char *end = p + size
        cdef const char *key
        cdef const char *number
        cdef const char *cached
        cdef Py_ssize_t key_size, cached_size
        cdef bint real
        cdef int64_t whole
        cdef int digits
        cdef Py_ssize_t i
        cdef char *stop
        cdef object name
        self.keys, self.last_keys = self.last_keys, self.keys
        del self.keys[:]
        self.count = 0
        p = _space(p, end)
        if p >= end or p[0] != b'{':
            return False
        p = _space(p + 1, end)
        if p < end and p[0] == b'}':
            return _space(p + 1, end) == end
        while True:
            if p >= end or p[0] != b'"' or self.count == 64:
                return False
            p += 1
            key = p
            while p < end and p[0] != b'"':
                if p[0] == b'\\' or <unsigned char>p[0] < 0x20:
                    return False
                p += 1
            if p >= end:
                return False
            key_size = p - key
            p = _space(p + 1, end)
            if p >= end or p[0] != b':':
                return False
            p = _space(p + 1, end)
            # A JSON number: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
            number = p
            if p < end and p[0] == b'-':
                p += 1
            if p >= end or not (b'0' <= p[0] <= b'9'):
                return False
            if p[0] == b'0':
                p += 1
            else:
                p = _digits(p, end)
            digits = <int>(p - number) - (number[0] == b'-')
            real = False
            if p < end and p[0] == b'.':
                real = True
                p += 1
                if p >= end or not (b'0' <= p[0] <= b'9'):
                    return False
                p = _digits(p, end)
            if p < end and (p[0] == b'e' or p[0] == b'E'):
                real = True
                p += 1
                if p < end and (p[0] == b'+' or p[0] == b'-'):
                    p += 1
                if p >= end or not (b'0' <= p[0] <= b'9'):
                    return False
                p = _digits(p, end)
            if not real:
                if digits > 18:  # it may not fit in 64 bits (SQLite reads it as a real then): the twin
                    return False
                whole = 0
                for i in range(number[0] == b'-', p - number):
                    whole = whole * 10 + (number[i] - 48)
                self.wholes[self.count] = -whole if number[0] == b'-' else whole
                self.is_real[self.count] = False
            else:
                # Most values are short decimals (42.5, 0.1): read exactly without float()'s reader,
                # which switches the x87 unit's precision twice a number (a sixth of the read side
                # builder's CPU under 100-event batches of five measures) to give the same double.
                if not _exact_real(number, p, &self.reals[self.count]):
                    self.reals[self.count] = PyOS_string_to_double(number, &stop, NULL)
                    if stop != p:
                        return False
                self.is_real[self.count] = True
            # The key: the row before's object when its bytes are the same (most rows of a name
            # carry the same keys in the same order), so neither a new str nor its hash is made.
            name = None
            if self.count < len(self.last_keys):
                name = self.last_keys[self.count]
                cached = PyUnicode_AsUTF8AndSize(name, &cached_size)
                if cached_size != key_size or memcmp(cached, key, key_size) != 0:
                    name = None
            if name is None:
                name = PyUnicode_DecodeUTF8(key, key_size, NULL)
            self.keys.append(name)
            self.count += 1
            p = _space(p, end)
            if p < end and p[0] == b',':
                p = _space(p + 1, end)
                continue
            if p < end and p[0] == b'}':
                return _space(p + 1, end) == end
            return False


cdef class _Count:
    cdef int64_t events


# The stored row's columns (store/sqlite/writer.py's _EVENT_COLUMNS) that Sums.add_rows and UserRows.add read.
cdef enum:
    TENANT = 0
    NAME = 2
    TYPE = 3
    EXTERNAL_ID = 4
    DIMS = 8
    RECEIVED = 7
    MEASURES = 9


cdef class Sums:
    """The rollups' counts of some rows: events per (tenant_id, minute, event_name, event_type), and
    the measures' sums per (tenant_id, minute, event_name, measure), as ``_measures_py.Sums``."""

    cdef dict groups  # (tenant_id, minute, event_name) → {measure: _Total}
    cdef dict counts  # (tenant_id, minute, event_name, event_type) → _Count
    cdef _Parse parse
    cdef object last_group
    cdef dict last_totals
    cdef object last_received, last_minute, last_key
    cdef _Count last_count
    cdef public int64_t rows

    def __cinit__(self):
        self.groups = {}
        self.counts = {}
        self.parse = _Parse()

    cdef dict _totals(self, object tenant_id, object minute, object event_name):
        cdef object group = self.last_group
        if group is not None and (<tuple>group)[0] == tenant_id and (<tuple>group)[1] == minute \
                and (<tuple>group)[2] == event_name:
            return self.last_totals
        group = (tenant_id, minute, event_name)
        totals = self.groups.get(group)
        if totals is None:
            totals = self.groups[group] = {}
        self.last_group, self.last_totals = group, totals
        return totals

    cdef int _add(self, dict totals, object measures) except -1:
        cdef _Total total
        cdef int i
        cdef bint read
        try:
            read = type(measures) is str and self.parse.read(measures)
        except UnicodeEncodeError:  # a lone surrogate: the twin reads the text as it is
            read = False
        if read:
            for i in range(self.parse.count):
                key = self.parse.keys[i]
                total = totals.get(key)
                if total is None:
                    total = totals[key] = _Total()
                if self.parse.is_real[i]:
                    total.add_real(self.parse.reals[i])
                else:
                    total.add_whole(self.parse.wholes[i])
            return 0
        for key, value in numeric_pairs(measures):
            total = totals.get(key)
            if total is None:
                total = totals[key] = _Total()
            if type(value) is float:
                total.add_real(value)
            else:
                total.add_whole(value)
        return 0

    def add_measures(self, rows):
        """(tenant_id, minute, event_name, measures) rows: their measures only."""
        for tenant_id, minute, event_name, measures in rows:
            self._add(self._totals(tenant_id, minute, event_name), measures)

    def add_rows(self, list rows):
        """Stored rows (the writer's tuples): each is an event of its minute, and its measures are added."""
        cdef tuple row
        cdef _Count count
        for row in rows:
            received = row[RECEIVED]
            if received != self.last_received:
                self.last_received, self.last_minute = received, received[:16]
            minute = self.last_minute
            key = self.last_key
            if key is None or (<tuple>key)[0] != row[TENANT] or (<tuple>key)[1] != minute \
                    or (<tuple>key)[2] != row[NAME] or (<tuple>key)[3] != row[TYPE]:
                key = (row[TENANT], minute, row[NAME], row[TYPE])
                count = self.counts.get(key)
                if count is None:
                    count = self.counts[key] = _Count()
                self.last_key, self.last_count = key, count
            self.last_count.events += 1
            measures = row[MEASURES]
            if measures != "{}":
                self._add(self._totals(row[TENANT], minute, row[NAME]), measures)
        self.rows += len(rows)

    def event_counts(self):
        """[(tenant_id, minute, event_name, event_type, events)]"""
        return [(*key, (<_Count>count).events) for key, count in self.counts.items()]

    def measure_sums(self):
        """[(tenant_id, minute, event_name, measure, sum)]"""
        sums = []
        for group, totals in self.groups.items():
            for key, total in totals.items():
                sums.append((*group, key, (<_Total>total).result()))
        return sums


cdef class UserRows:
    """The users file's part of rows committed in order, as ``_measures_py.UserRows``: per block of
    ``2**user_bits`` seqs, tenant and external_id, the seqs; the (tenant, UTC day, external_id)
    seen; per tenant, event name and block of ``2**name_bits`` seqs, the first and last seq. With
    ``users`` false, the name blocks alone.

    Kept as a dict per (block, tenant) or (tenant, day) of dicts and sets by external_id and name,
    the one last used at hand: a row then costs a look-up by a string whose hash is cached, not a
    tuple made and hashed (~0.1 µs a row against ~0.5).
    """

    cdef int user_bits, name_bits
    cdef bint users
    cdef dict seqs  # (block, tenant_id) → {external_id: [seq]}
    cdef dict days  # (tenant_id, day) → {external_id}
    cdef dict names  # (tenant_id, block) → {event_name: [first, last]}
    cdef object seqs_tenant, days_tenant, days_received, names_tenant
    cdef int64_t seqs_block, names_block
    cdef dict seqs_at, names_at
    cdef set days_at
    cdef public int64_t rows

    def __cinit__(self, int user_bits, int name_bits, bint users=True):
        self.user_bits, self.name_bits, self.users = user_bits, name_bits, users
        self.seqs, self.days, self.names = {}, {}, {}
        self.seqs_block = self.names_block = -1

    def add(self, int64_t first_seq, list rows):
        """Stored rows (the writer's tuples), the first of them at ``first_seq``, the others after it."""
        cdef tuple row
        cdef int64_t seq = first_seq, block
        cdef list found
        for row in rows:
            tenant_id = row[TENANT]
            block = seq >> self.name_bits
            if block != self.names_block or tenant_id is not self.names_tenant:
                self.names_at = self.names.setdefault((tenant_id, block), {})
                self.names_block, self.names_tenant = block, tenant_id
            found = self.names_at.get(row[NAME])
            if found is None:
                self.names_at[row[NAME]] = [seq, seq]
            else:
                found[1] = seq
            external_id = row[EXTERNAL_ID]
            if external_id is not None and self.users:
                block = seq >> self.user_bits
                if block != self.seqs_block or tenant_id is not self.seqs_tenant:
                    self.seqs_at = self.seqs.setdefault((block, tenant_id), {})
                    self.seqs_block, self.seqs_tenant = block, tenant_id
                found = self.seqs_at.get(external_id)
                if found is None:
                    self.seqs_at[external_id] = [seq]
                else:
                    found.append(seq)
                received = row[RECEIVED]
                if received is not self.days_received or tenant_id is not self.days_tenant:
                    self.days_at = self.days.setdefault((tenant_id, received[:10]), set())
                    self.days_received, self.days_tenant = received, tenant_id
                self.days_at.add(external_id)
            seq += 1
        self.rows += len(rows)

    def user_entries(self):
        """How many rows ``user_seqs`` gives: one per block, tenant and external_id."""
        return sum(len(<dict>by_user) for by_user in self.seqs.values())

    def user_seqs(self):
        """[(block, tenant_id, external_id, first seq, the seqs comma-separated)]"""
        return [(*at, external_id, (<list>seqs)[0], ",".join(map(str, seqs)))
                for at, by_user in self.seqs.items() for external_id, seqs in (<dict>by_user).items()]

    def daily_users(self):
        """[(tenant_id, day, external_id)]"""
        return [(*at, external_id) for at, users in self.days.items() for external_id in <set>users]

    def name_blocks(self):
        """[(tenant_id, event_name, block, first seq, last seq)]"""
        return [(at[0], name, at[1], (<list>span)[0], (<list>span)[1])
                for at, by_name in self.names.items() for name, span in (<dict>by_name).items()]


def slim_rows(list rows):
    """Stored rows with only the columns Sums.add_rows and UserRows.add read; the others (event id,
    anonymous id, timestamp, dims, library) are "": what the read side's builder holds of them."""
    cdef tuple row
    return [(row[TENANT], "", row[NAME], row[TYPE], row[EXTERNAL_ID], "", "", row[RECEIVED], "",
             row[MEASURES], "") for row in rows]


def held_bytes(list rows):
    """About the memory stored rows (the writer's tuples) hold: ~400 bytes a row, and their dims' and
    measures' characters."""
    cdef tuple row
    cdef Py_ssize_t total = 0
    for row in rows:
        total += 400 + len(<str>row[DIMS]) + len(<str>row[MEASURES])
    return total


def sum_measures(rows):
    """(tenant_id, minute, event_name, measures) rows → [(tenant_id, minute, event_name, measure, sum)]."""
    sums = Sums()
    sums.add_measures(rows)
    return sums.measure_sums()
