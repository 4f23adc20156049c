# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The in-memory dedup window: 64-bit fingerprints of (tenant_id, event_id) → row seq.

Why in memory: a random-key B-tree in SQLite dirties one page per new event
id (PERF-NOTES: 71k → 12k rows/s by 10M rows), while ``semantic_events`` itself
can stay append-only. The database remains the truth: the store builds this
index from the table's recent rows on start, tails rows other processes
committed before every write (under the write lock), and verifies every
fingerprint hit against the row it points to, so dedup stays exact.

Open addressing with linear probing over two C arrays; a fingerprint may
appear more than once (two ids that collide), so ``candidates`` returns all
of them. A slot keeps the seq's low 32 bits only (12 bytes a slot, not 16:
the window is most of the server's memory); ``candidates`` restores the rest
from the highest seq added, exact while a window spans fewer than 2**32 rows
(and a wrong guess would only fail the row check that follows every hit).
``_index_py.py`` is the pure-Python twin. Imports nothing of ours.
"""

from cpython.mem cimport PyMem_Calloc, PyMem_Free
from libc.stdint cimport int64_t, uint32_t, uint64_t

from array import array

cdef uint64_t _FNV_OFFSET = 14695981039346656037ULL
cdef uint64_t _FNV_PRIME = 1099511628211ULL


cdef inline uint64_t _mix(uint64_t x) nogil:
    # splitmix64's finaliser: spreads FNV's weak low bits over the table
    x ^= x >> 30
    x *= 0xbf58476d1ce4e5b9ULL
    x ^= x >> 27
    x *= 0x94d049bb133111ebULL
    x ^= x >> 31
    return x


cdef inline uint64_t _fnv(const unsigned char *data, Py_ssize_t size, uint64_t h) nogil:
    cdef Py_ssize_t i
    for i in range(size):
        h ^= data[i]
        h *= _FNV_PRIME
    return h


cpdef uint64_t fingerprint(str tenant_id, str event_id):
    """A non-zero 64-bit fingerprint of the dedup key."""
    cdef bytes tenant = tenant_id.encode("utf-8", "surrogatepass")
    cdef bytes event = event_id.encode("utf-8", "surrogatepass")
    cdef uint64_t h = _fnv(<const unsigned char *>tenant, len(tenant), _FNV_OFFSET)
    h ^= 0
    h *= _FNV_PRIME
    h = _mix(_fnv(<const unsigned char *>event, len(event), h))
    return h if h != 0 else 1


def fingerprints(str tenant_id, list rows, Py_ssize_t column):
    """``fingerprint(tenant_id, row[column])`` for every row, as array('Q')."""
    cdef bytes tenant = tenant_id.encode("utf-8", "surrogatepass")
    cdef uint64_t base = _fnv(<const unsigned char *>tenant, len(tenant), _FNV_OFFSET)
    base *= _FNV_PRIME  # the 0 separator
    cdef Py_ssize_t i, n = len(rows)
    result = array("Q", bytes(8 * n))
    cdef uint64_t[::1] out = result
    cdef bytes event
    cdef uint64_t h
    for i in range(n):
        event = (<str>(<tuple>rows[i])[column]).encode("utf-8", "surrogatepass")
        h = _mix(_fnv(<const unsigned char *>event, len(event), base))
        out[i] = h if h != 0 else 1
    return result


cdef class FingerprintIndex:
    """fingerprint → seq multimap; 12 bytes a slot, at most 85 % full.

    Linear probing stays cheap enough at 85 % (a miss reads ~3 cache lines of
    keys), and each doubling, when old and new tables live together, is the
    window's peak: doubling later saves up to half the memory.
    """

    cdef uint64_t *keys  # 0 marks an empty slot
    cdef uint32_t *values  # the seq's low 32 bits
    cdef size_t capacity
    cdef size_t count
    cdef int64_t top  # the highest seq added

    def __cinit__(self, size_t capacity=1 << 14):
        cdef size_t size = 1024
        while size < capacity:
            size <<= 1
        self._allocate(size)

    cdef void _allocate(self, size_t size) except *:
        self.keys = <uint64_t *>PyMem_Calloc(size, sizeof(uint64_t))
        self.values = <uint32_t *>PyMem_Calloc(size, sizeof(uint32_t))
        if self.keys == NULL or self.values == NULL:
            raise MemoryError()
        self.capacity = size
        self.count = 0

    def __dealloc__(self):
        PyMem_Free(self.keys)
        PyMem_Free(self.values)

    def __len__(self):
        return self.count

    @property
    def memory_bytes(self):
        return self.capacity * 12

    cdef void _put(self, uint64_t key, uint32_t value) noexcept nogil:
        cdef size_t mask = self.capacity - 1
        cdef size_t slot = key & mask
        while self.keys[slot] != 0:
            slot = (slot + 1) & mask
        self.keys[slot] = key
        self.values[slot] = value
        self.count += 1

    cdef void _grow(self) except *:
        cdef uint64_t *old_keys = self.keys
        cdef uint32_t *old_values = self.values
        cdef size_t old_capacity = self.capacity, i
        self._allocate(old_capacity * 2)
        for i in range(old_capacity):
            if old_keys[i] != 0:
                self._put(old_keys[i], old_values[i])
        PyMem_Free(old_keys)
        PyMem_Free(old_values)

    cpdef add(self, uint64_t key, int64_t value):
        if key == 0:
            raise ValueError("fingerprints are never 0")
        if value < 0:
            raise ValueError("seqs are never negative")
        if (self.count + 1) * 20 > self.capacity * 17:  # 85 % full
            self._grow()
        self._put(key, <uint32_t>(value & 0xFFFFFFFF))
        if value > self.top:
            self.top = value

    def add_many(self, const uint64_t[::1] keys, const int64_t[::1] values):
        cdef Py_ssize_t i
        for i in range(keys.shape[0]):
            self.add(keys[i], values[i])

    def candidates(self, uint64_t key):
        """Every seq stored under ``key`` (usually none or one)."""
        cdef size_t mask = self.capacity - 1
        cdef size_t slot = key & mask
        cdef int64_t seq
        found = []
        while self.keys[slot] != 0:
            if self.keys[slot] == key:
                seq = (self.top & ~(<int64_t>0xFFFFFFFF)) | self.values[slot]
                if seq > self.top:
                    seq -= <int64_t>1 << 32
                found.append(seq)
            slot = (slot + 1) & mask
        return found

    cdef bint _contains(self, uint64_t key) noexcept nogil:
        cdef size_t mask = self.capacity - 1
        cdef size_t slot = key & mask
        while self.keys[slot] != 0:
            if self.keys[slot] == key:
                return True
            slot = (slot + 1) & mask
        return False

    def hits(self, const uint64_t[::1] keys):
        """Positions in ``keys`` whose fingerprint is stored (candidates to verify)."""
        cdef Py_ssize_t i
        found = []
        for i in range(keys.shape[0]):
            if self._contains(keys[i]):
                found.append(i)
        return found
