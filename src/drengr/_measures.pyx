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

Both run in the writer's thread as it hands each group it committed over to the builder
(``read_side.Committed``), so they keep what they need at hand: ``Sums`` each name's measures'
keys with their sums, ``UserRows`` each user's seqs as the text the users file stores. On the
HTTP benchmark's rows the two cost ~0.2 µs a row together; in SQL (a sort and a B-tree entry per
event for the users file, ``json_each`` for the sums) it was ~10 µs.
"""

cimport cython
from cpython.ref cimport PyObject
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.unicode cimport PyUnicode_AsUTF8AndSize, PyUnicode_DecodeASCII, PyUnicode_DecodeUTF8
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
    """One row's pairs, read by ``read``: keys (the objects of ``cached`` where their bytes agree)
    and numbers, each whole (``wholes``) or real (``reals``)."""

    cdef list keys  # where not ``same``: the keys
    cdef int count
    cdef bint same  # each key is ``cached``'s at its place (the keys are all of them, or the first)
    cdef int64_t wholes[64]
    cdef double reals[64]
    cdef bint is_real[64]

    def __cinit__(self):
        self.keys = []

    cdef bint read(self, str measures, list cached) except -1:
        """True: ``measures`` is a flat object of numbers with plain keys, read into the pairs;
        False: anything else (the twin reads it). ``cached``: the keys of the row before of its
        event name (most rows of a name carry the same keys in the same order)."""
        cdef Py_ssize_t size
        cdef const char *p = PyUnicode_AsUTF8AndSize(measures, &size)  # a lone surrogate: raises
        cdef const char *end = p + size
        cdef const char *key
        cdef const char *number
        cdef const char *cached_key
        cdef Py_ssize_t key_size, cached_size
        cdef bint real
        cdef int64_t whole
        cdef int digits
        cdef Py_ssize_t i
        cdef char *stop
        cdef object name
        self.count = 0
        self.same = True
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
            # The key: the cached object when its bytes are the same, so that neither a new str nor
            # its hash is made (nor, when all are, a look-up: Sums keeps their sums at hand).
            name = None
            if self.count < len(cached):
                name = cached[self.count]
                cached_key = PyUnicode_AsUTF8AndSize(name, &cached_size)
                if cached_size != key_size or memcmp(cached_key, key, key_size) != 0:
                    name = None
            if name is None:
                if self.same:  # the keys so far were cached's: listed from here on
                    self.same = False
                    self.keys = cached[:self.count]
                name = PyUnicode_DecodeUTF8(key, key_size, NULL)
            if not self.same:
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


cdef class _Name:
    """One event name's part of a tenant's minute: its events by type, its measures' sums, and the
    keys of its last row's measures with their sums at hand (``slots``)."""

    cdef dict types  # event_type → _Count
    cdef object last_type
    cdef _Count last_count
    cdef dict totals  # measure → _Total
    cdef list keys  # the last row's measures' keys, in order
    cdef list slots  # their _Total, in the same order

    def __cinit__(self):
        self.types, self.totals, self.keys, self.slots = {}, {}, [], []


# The stored row's columns (store/sqlite/writer.py's _EVENT_COLUMNS) that Sums.add_rows and UserRows.add read.
cdef enum:
    TENANT = 0
    NAME = 2
    TYPE = 3
    EXTERNAL_ID = 4
    RECEIVED = 7
    MEASURES = 9


cdef class Sums:
    """The rollups' counts of some rows: events per (tenant_id, minute, event_name, event_type), and
    the measures' sums per (tenant_id, minute, event_name, measure), as ``_measures_py.Sums``.

    Kept per (tenant_id, minute) as a dict by event name (``_Name``): a writer's rows share their
    tenant's and time's objects, so a row costs a look-up by its name and, where its measures carry
    the keys of the name's row before, no other (~0.15 µs a row of five measures, against ~0.6 with
    a tuple made, hashed and looked up per row and measure).
    """

    cdef dict groups  # (tenant_id, minute) → {event_name: _Name}
    cdef _Parse parse
    cdef object last_tenant, last_time  # the time: a received_at (add_rows) or a minute (add_measures)
    cdef dict last_names
    cdef object last_event_name
    cdef _Name last_name
    cdef public int64_t rows
    cdef readonly int64_t entries  # the names, counts and sums it holds (a measure of its memory)

    def __cinit__(self):
        self.groups = {}
        self.parse = _Parse()

    cdef _Name _name(self, object tenant_id, object time, object event_name):
        """The ``_Name`` of ``event_name`` in the minute of ``time`` (its first 16 characters)."""
        cdef _Name found
        if tenant_id is not self.last_tenant or time is not self.last_time:
            if self.last_names is None or tenant_id != self.last_tenant or time != self.last_time:
                group = (tenant_id, time[:16])
                names = self.groups.get(group)
                if names is None:
                    names = self.groups[group] = {}
                if names is not self.last_names:
                    self.last_names, self.last_event_name = names, None
            self.last_tenant, self.last_time = tenant_id, time
        if event_name is self.last_event_name:
            return self.last_name
        found = self.last_names.get(event_name)
        if found is None:
            found = self.last_names[event_name] = _Name()
            self.entries += 1
        self.last_event_name, self.last_name = event_name, found
        return found

    cdef _Count _count(self, _Name name, object event_type):
        """``name``'s count of events of ``event_type``, made if new."""
        cdef _Count count = name.types.get(event_type)
        if count is None:
            count = name.types[event_type] = _Count()
            self.entries += 1
        return count

    cdef _Total _total(self, _Name name, object key):
        """``name``'s sum of the measure ``key``, made if new."""
        total = name.totals.get(key)
        if total is None:
            total = name.totals[key] = _Total()
            self.entries += 1
        return total

    cdef int _add(self, _Name name, object measures) except -1:
        cdef _Total total
        cdef int i
        cdef bint read
        cdef list slots
        try:
            read = type(measures) is str and self.parse.read(measures, name.keys)
        except UnicodeEncodeError:  # a lone surrogate: the twin reads the text as it is
            read = False
        if read:
            if self.parse.same:
                slots = name.slots
            else:
                slots = []
                for key in self.parse.keys:
                    slots.append(self._total(name, key))
                name.keys, name.slots = self.parse.keys, slots  # (read makes a new list when it lists them)
            for i in range(self.parse.count):
                total = <_Total>slots[i]
                if self.parse.is_real[i]:
                    total.add_real(self.parse.reals[i])
                else:
                    total.add_whole(self.parse.wholes[i])
            return 0
        for key, value in numeric_pairs(measures):
            total = self._total(name, key)
            if type(value) is float:
                total.add_real(value)
            else:
                total.add_whole(value)
        return 0

    def add_measures(self, rows):
        """(tenant_id, minute, event_name, measures) rows: their measures only."""
        for tenant_id, minute, event_name, measures in rows:
            self._add(self._name(tenant_id, minute, event_name), measures)

    def add_rows(self, list rows):
        """Stored rows (the writer's tuples): each is an event of its minute, and its measures are added."""
        cdef tuple row
        cdef _Name name
        for row in rows:
            name = self._name(row[TENANT], row[RECEIVED], row[NAME])
            event_type = row[TYPE]
            if name.last_count is None or (event_type is not name.last_type and event_type != name.last_type):
                name.last_count = self._count(name, event_type)
            name.last_type = event_type
            name.last_count.events += 1
            measures = row[MEASURES]
            if measures != "{}":
                self._add(name, measures)
        self.rows += len(rows)

    def add_summary(self, summary):
        """Another ``Sums``'s counts and sums (its ``summary()``: the request's process adds up a
        job's rows as it sends them), added to these."""
        cdef _Count count
        cdef _Total total
        events, measures = summary
        for tenant_id, minute, event_name, event_type, events_of_type in events:
            count = self._count(self._name(tenant_id, minute, event_name), event_type)
            count.events += events_of_type
            self.rows += events_of_type
        for tenant_id, minute, event_name, key, value in measures:
            total = self._total(self._name(tenant_id, minute, event_name), key)
            if type(value) is float:
                total.add_real(value)
            else:
                total.add_whole(value)

    def summary(self):
        """(``event_counts()``, ``measure_sums()``), for ``add_summary``."""
        return self.event_counts(), self.measure_sums()

    def event_counts(self):
        """[(tenant_id, minute, event_name, event_type, events)]"""
        return [(*group, event_name, event_type, (<_Count>count).events)
                for group, names in self.groups.items() for event_name, name in (<dict>names).items()
                for event_type, count in (<_Name>name).types.items()]

    def measure_sums(self):
        """[(tenant_id, minute, event_name, measure, sum)]"""
        return [(*group, event_name, key, (<_Total>total).result())
                for group, names in self.groups.items() for event_name, name in (<dict>names).items()
                for key, total in (<_Name>name).totals.items()]


cdef class _Span:
    """An event name's first and last seq in a block."""

    cdef int64_t first, last


cdef class _Seqs:
    """A user's seqs in a block, as the users file keeps them: their decimal text, comma-separated,
    written as they come (a str made from each seq, and the list of them joined, took as long as
    the rest of the users file's part together)."""

    cdef int64_t first
    cdef char *text
    cdef Py_ssize_t size, capacity
    cdef set day  # the (tenant, day) set the user was last added to: a row of the same day adds nothing

    def __dealloc__(self):
        PyMem_Free(self.text)

    cdef int add(self, int64_t seq) except -1:
        cdef char digits[24]
        cdef int count = 0
        cdef uint64_t value = <uint64_t>seq if seq >= 0 else <uint64_t>0 - <uint64_t>seq
        cdef char *grown
        cdef Py_ssize_t capacity
        if self.size + 24 > self.capacity:
            capacity = max(64, 2 * self.capacity)
            grown = <char *>PyMem_Realloc(self.text, capacity)
            if grown == NULL:
                raise MemoryError()
            self.text, self.capacity = grown, capacity
        if self.size == 0:
            self.first = seq
        else:
            self.text[self.size] = b','
            self.size += 1
        if seq < 0:
            self.text[self.size] = b'-'
            self.size += 1
        while True:
            digits[count] = <char>(48 + value % 10)
            count += 1
            value //= 10
            if value == 0:
                break
        while count:
            count -= 1
            self.text[self.size] = digits[count]
            self.size += 1
        return 0

    cdef str result(self):
        return PyUnicode_DecodeASCII(self.text, self.size, NULL)


cdef class UserRows:
    """The users file's part of rows committed in order, as ``_measures_py.UserRows``: per block of
    ``2**user_bits`` seqs, tenant and external_id, the seqs; the (tenant, UTC day, external_id)
    seen; per tenant, event name and block of ``2**name_bits`` seqs, the first and last seq. With
    ``users`` false, the name blocks alone.

    Kept as a dict per (block, tenant) or (tenant, day) of dicts and sets by external_id and name,
    the one last used at hand: a row then costs a look-up by a string whose hash is cached, not a
    tuple made and hashed (~0.04 µs a row, with the seqs written as text, against ~0.5). A row of the
    name before it, or of a day its user was added to, costs no look-up for them.
    """

    cdef int user_bits, name_bits
    cdef bint users
    cdef dict seqs  # (block, tenant_id) → {external_id: _Seqs}
    cdef dict days  # (tenant_id, day) → {external_id}
    cdef dict names  # (tenant_id, block) → {event_name: _Span}
    cdef object seqs_tenant, days_tenant, days_received, names_tenant
    cdef int64_t seqs_block, names_block
    cdef dict seqs_at, names_at
    cdef object names_key  # the event name last looked up in names_at, and its span
    cdef _Span names_span
    cdef set days_at
    cdef int64_t entries
    cdef readonly int64_t name_entries  # the (tenant, block, name) spans it holds
    cdef public int64_t rows

    def __cinit__(self, int user_bits, int name_bits, bint users=True):
        self.user_bits, self.name_bits, self.users = user_bits, name_bits, users
        self.seqs, self.days, self.names = {}, {}, {}
        self.seqs_block = self.names_block = -1

    def add(self, int64_t first_seq, list rows):
        """Stored rows (the writer's tuples), the first of them at ``first_seq``, the others after it."""
        cdef tuple row
        cdef int64_t seq = first_seq, block
        cdef _Span span
        cdef _Seqs seqs
        for row in rows:
            tenant_id = row[TENANT]
            block = seq >> self.name_bits
            if block != self.names_block or tenant_id is not self.names_tenant:
                self.names_at = self.names.setdefault((tenant_id, block), {})
                self.names_block, self.names_tenant = block, tenant_id
                self.names_key, self.names_span = None, None
            event_name = row[NAME]
            if self.names_span is not None and event_name is self.names_key:  # (a name's rows share a str)
                span = self.names_span
            else:
                span = self.names_at.get(event_name)
                if span is None:
                    span = self.names_at[event_name] = _Span()
                    self.name_entries += 1
                    span.first = seq
                self.names_key, self.names_span = event_name, span
            span.last = seq
            external_id = row[EXTERNAL_ID]
            if external_id is not None and self.users:
                block = seq >> self.user_bits
                if block != self.seqs_block or tenant_id is not self.seqs_tenant:
                    self.seqs_at = self.seqs.setdefault((block, tenant_id), {})
                    self.seqs_block, self.seqs_tenant = block, tenant_id
                seqs = self.seqs_at.get(external_id)
                if seqs is None:
                    seqs = self.seqs_at[external_id] = _Seqs()
                    self.entries += 1
                seqs.add(seq)
                received = row[RECEIVED]
                if received is not self.days_received or tenant_id is not self.days_tenant:
                    self.days_at = self.days.setdefault((tenant_id, received[:10]), set())
                    self.days_received, self.days_tenant = received, tenant_id
                if seqs.day is not self.days_at:
                    self.days_at.add(external_id)
                    seqs.day = self.days_at
            seq += 1
        self.rows += len(rows)

    def user_entries(self):
        """How many rows ``user_seqs`` gives: one per block, tenant and external_id."""
        return self.entries

    def user_seqs(self):
        """[(block, tenant_id, external_id, first seq, the seqs comma-separated)]"""
        return [(*at, external_id, (<_Seqs>seqs).first, (<_Seqs>seqs).result())
                for at, by_user in self.seqs.items() for external_id, seqs in (<dict>by_user).items()]

    def daily_users(self):
        """[(tenant_id, day, external_id)]"""
        return [(*at, external_id) for at, users in self.days.items() for external_id in <set>users]

    def name_blocks(self):
        """[(tenant_id, event_name, block, first seq, last seq)]"""
        return [(at[0], name, at[1], (<_Span>span).first, (<_Span>span).last)
                for at, by_name in self.names.items() for name, span in (<dict>by_name).items()]


def sum_measures(rows):
    """(tenant_id, minute, event_name, measures) rows → [(tenant_id, minute, event_name, measure, sum)]."""
    sums = Sums()
    sums.add_measures(rows)
    return sums.measure_sums()
