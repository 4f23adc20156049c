# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The in-memory dedup window: 64-bit fingerprints of (tenant_id, event_id) → row seq.

Why in memory: a random-key B-tree in SQLite dirties one page per new event
id (PERF-NOTES: 71k → 12k rows/s by 10M rows), while ``semantic_events`` itself
can stay append-only. The database remains the truth: the store builds this
index from the table's recent rows on start, tails rows other processes
committed before every write (under the write lock), and verifies every
fingerprint hit against the row it points to, so dedup stays exact.

Open addressing with linear probing over one C array of 8-byte slots: the
fingerprint's high 32 bits (its *tag*, which also picks the home slot) and
the seq's low 32 bits. Several rows may share a tag (two ids whose
fingerprints agree there: about one lookup in 2**32 / rows), so
``candidates`` returns all of them, and the store's row check after every
hit sorts them out. The rest of a seq comes back from the highest seq added,
exact while a window spans fewer than 2**32 rows (a wrong guess would only
fail that row check). 8 bytes a slot, not 16: the window is most of the
writer's memory. ``_index_py.py`` is the pure-Python twin. Imports nothing
of ours.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING
from cpython.mem cimport PyMem_Calloc, PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.string cimport memcpy, memset
from libc.stdint cimport int64_t, uint32_t, uint64_t

from array import array

cdef extern from *:
    """
    #define DRENGR_PREFETCH(address) __builtin_prefetch(address)
    """
    void DRENGR_PREFETCH(const void *address) noexcept nogil

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


cdef inline uint64_t _row_fingerprint(str tenant_id, str event_id) except 0:
    """``fingerprint``, from the strings' own UTF-8 (no copy for ASCII); lone surrogates go the long way."""
    cdef const char *data
    cdef Py_ssize_t size
    cdef uint64_t h
    try:
        data = PyUnicode_AsUTF8AndSize(tenant_id, &size)
        h = _fnv(<const unsigned char *>data, size, _FNV_OFFSET)
        h *= _FNV_PRIME  # the 0 separator
        data = PyUnicode_AsUTF8AndSize(event_id, &size)
        h = _mix(_fnv(<const unsigned char *>data, size, h))
    except UnicodeEncodeError:
        return fingerprint(tenant_id, event_id)
    return h if h != 0 else 1


def index_rows(list rows, FingerprintIndex current, FingerprintIndex previous=None, str boundary=None):
    """Add (seq, tenant_id, event_id, received_at) rows: to ``current``, or to ``previous`` when
    received before ``boundary``. The last row's seq, -1 for none (the window's load, in bulk)."""
    cdef tuple row
    cdef int64_t seq = -1
    for row in rows:
        seq = row[0]
        if previous is not None and <str>row[3] < boundary:
            previous.add(_row_fingerprint(row[1], row[2]), seq)
        else:
            current.add(_row_fingerprint(row[1], row[2]), seq)
    return seq


cdef inline uint64_t _tag(uint64_t key) noexcept nogil:
    cdef uint64_t tag = key >> 32
    return tag if tag != 0 else 1


cdef class FingerprintIndex:
    """fingerprint tag → seq multimap; 8 bytes a slot, at most 85 % full.

    Linear probing stays cheap enough at 85 % (a miss reads a cache line or
    two), and doubling later saves up to half the memory; a doubling happens
    in place (``_grow``).
    """

    cdef uint64_t *slots  # tag << 32 | seq & 0xFFFFFFFF; 0: empty (a tag is never 0)
    cdef size_t capacity
    cdef size_t count
    cdef int64_t top  # the highest seq added

    def __cinit__(self, size_t capacity=1 << 14):
        cdef size_t size = 1024
        while size < capacity:
            size <<= 1
        self._allocate(size)

    cdef void _allocate(self, size_t size) except *:
        self.slots = <uint64_t *>PyMem_Calloc(size, sizeof(uint64_t))
        if self.slots == NULL:
            raise MemoryError()
        self.capacity = size
        self.count = 0

    def __dealloc__(self):
        PyMem_Free(self.slots)

    def __len__(self):
        return self.count

    @property
    def memory_bytes(self):
        return self.capacity * sizeof(uint64_t)

    @property
    def top_seq(self):
        """The highest seq added (0 for none): a run's seqs are read back from it."""
        return self.top

    cdef void _put(self, uint64_t slot_value) noexcept nogil:
        cdef size_t mask = self.capacity - 1
        cdef size_t slot = (slot_value >> 32) & mask
        while self.slots[slot] != 0:
            slot = (slot + 1) & mask
        self.slots[slot] = slot_value
        self.count += 1

    cdef void _grow(self) except *:
        """Double in place: ``realloc`` (``mremap`` here: no copy), then rehash.

        Old and new tables never live side by side, so a doubling costs no
        more memory than its result. Each slot moves to its home in the new
        table (``tag & mask`` gains a bit: the same slot or the one ``old``
        further). The run at the very start, which may hold slots wrapped
        around from the end, is taken out first and put back last; every
        other slot is taken out and put back in order, and each lands at or
        before its old position (or in the upper half), on a probe path of
        slots already rehashed: so every slot stays reachable from its home.
        """
        cdef size_t old = self.capacity, i, head = 0
        cdef uint64_t value
        cdef uint64_t *held
        cdef uint64_t *slots
        while self.slots[head] != 0:  # below 85 % full, an empty slot exists
            head += 1
        held = <uint64_t *>PyMem_Malloc((head + 1) * sizeof(uint64_t))
        if held == NULL:
            raise MemoryError()
        slots = <uint64_t *>PyMem_Realloc(self.slots, 2 * old * sizeof(uint64_t))
        if slots == NULL:
            PyMem_Free(held)
            raise MemoryError()
        memset(slots + old, 0, old * sizeof(uint64_t))
        memcpy(held, slots, head * sizeof(uint64_t))
        memset(slots, 0, head * sizeof(uint64_t))
        self.slots = slots
        self.capacity = 2 * old
        self.count -= head
        for i in range(head + 1, old):
            value = slots[i]
            if value != 0:
                slots[i] = 0
                self.count -= 1
                self._put(value)
        for i in range(head):
            self._put(held[i])
        PyMem_Free(held)

    cpdef add(self, uint64_t key, int64_t value):
        if key == 0:
            raise ValueError("fingerprints are never 0")
        if value < 0:
            raise ValueError("seqs are never negative")
        if (self.count + 1) * 20 > self.capacity * 17:  # 85 % full
            self._grow()
        self._put(_tag(key) << 32 | <uint32_t>(value & 0xFFFFFFFF))
        if value > self.top:
            self.top = value

    def add_many(self, const uint64_t[::1] keys, const int64_t[::1] values):
        cdef Py_ssize_t i
        for i in range(keys.shape[0]):
            self.add(keys[i], values[i])

    def dump(self):
        """(capacity, count, top, table): the table's bytes as a read-only view, for the window file.

        The view shares the index's memory: write it out before the index changes.
        """
        cdef unsigned char[::1] view = <unsigned char[:self.capacity * sizeof(uint64_t)]> (
            <unsigned char *>self.slots
        )
        return self.capacity, self.count, self.top, memoryview(view).toreadonly()

    @staticmethod
    def load(size_t capacity, size_t count, int64_t top, fill):
        """The index ``dump`` described: ``fill(view)`` fills its empty table's bytes (a file's readinto).

        ValueError when the table cannot be one ``dump`` gave: a capacity that is not a
        power of two of 1,024 or more, fuller than 85 %, or a count its slots disagree with.
        """
        if capacity < 1024 or capacity & (capacity - 1) or count * 20 > capacity * 17 or top < 0:
            raise ValueError("not a dedup window's table")
        cdef FingerprintIndex index = FingerprintIndex(capacity)
        cdef unsigned char[::1] view = <unsigned char[:capacity * sizeof(uint64_t)]> (
            <unsigned char *>index.slots
        )
        fill(memoryview(view))
        cdef size_t i, found = 0
        for i in range(capacity):
            if index.slots[i] != 0:
                found += 1
        if found != count:
            raise ValueError("the table holds another count of entries")
        index.count = count
        index.top = top
        return index

    def sorted_slots(self):
        """This table's entries sorted by tag, for a run on disk (``window.py``), as a new bytearray
        of ``len(self)`` slots (``tag << 32 | seq & 0xFFFFFFFF``, native byte order).

        The table is left as it was, whatever happens (a MemoryError included): the
        entries are spread into the result by their tag's top byte, then each of
        those 256 parts is sorted by the tag's three other bytes (a radix sort, with
        a buffer as large as the largest part). The sort runs without the GIL: the
        caller must not add to the table meanwhile (a spill sorts a table that
        takes no more ids, on a thread of its own).
        """
        cdef size_t i, n = self.count, byte, shift, total, part, size, biggest = 1
        cdef size_t starts[257]
        cdef size_t counts[256]
        cdef uint64_t *into
        cdef uint64_t *source
        cdef uint64_t *other
        cdef uint64_t *slots = self.slots
        cdef size_t capacity = self.capacity
        result = bytearray(n * sizeof(uint64_t))
        if n == 0:
            return result
        cdef uint64_t *out = <uint64_t *>PyByteArray_AS_STRING(result)
        with nogil:
            memset(counts, 0, sizeof(counts))
            for i in range(capacity):
                if slots[i] != 0:
                    counts[slots[i] >> 56] += 1
            starts[0] = 0
            for i in range(256):
                starts[i + 1] = starts[i] + counts[i]
                biggest = max(biggest, counts[i])
                counts[i] = starts[i]
        other = <uint64_t *>PyMem_Malloc(biggest * sizeof(uint64_t))
        if other == NULL:
            raise MemoryError()
        with nogil:
            for i in range(capacity):
                if slots[i] != 0:
                    out[counts[slots[i] >> 56]] = slots[i]
                    counts[slots[i] >> 56] += 1
            for part in range(256):
                size = starts[part + 1] - starts[part]
                if size < 2:
                    continue
                source, into = out + starts[part], other
                for byte in range(3):  # the tag's low three bytes; an odd number of passes ends in ``other``
                    shift = 32 + 8 * byte
                    memset(counts, 0, sizeof(counts))
                    for i in range(size):
                        counts[(source[i] >> shift) & 0xFF] += 1
                    total = 0
                    for i in range(256):
                        counts[i], total = total, total + counts[i]
                    for i in range(size):
                        into[counts[(source[i] >> shift) & 0xFF]] = source[i]
                        counts[(source[i] >> shift) & 0xFF] += 1
                    source, into = into, source
                memcpy(out + starts[part], other, size * sizeof(uint64_t))
        PyMem_Free(other)
        return result

    def candidates(self, uint64_t key):
        """Every seq stored under ``key``'s tag (usually none or one)."""
        cdef uint64_t tag = _tag(key)
        cdef size_t mask = self.capacity - 1
        cdef size_t slot = tag & mask
        cdef int64_t seq
        found = []
        while self.slots[slot] != 0:
            if self.slots[slot] >> 32 == tag:
                seq = (self.top & ~(<int64_t>0xFFFFFFFF)) | <uint32_t>self.slots[slot]
                if seq > self.top:
                    seq -= <int64_t>1 << 32
                found.append(seq)
            slot = (slot + 1) & mask
        return found

    cdef bint _contains(self, uint64_t key) noexcept nogil:
        cdef uint64_t tag = _tag(key)
        cdef size_t mask = self.capacity - 1
        cdef size_t slot = tag & mask
        while self.slots[slot] != 0:
            if self.slots[slot] >> 32 == tag:
                return True
            slot = (slot + 1) & mask
        return False

    def hits(self, const uint64_t[::1] keys):
        """Positions in ``keys`` whose tag is stored (candidates to verify)."""
        cdef Py_ssize_t i
        found = []
        for i in range(keys.shape[0]):
            if self._contains(keys[i]):
                found.append(i)
        return found


# A Bloom filter over the tags of a run on disk: 16 bits an id in blocks of 512 bits (a cache
# line), 7 bits set in one block a tag. About one look-up in 1,000 for a tag not in the run is a
# false "maybe" (a page of the run read for nothing); a tag in the run is never missed.
cdef enum:
    _BLOCK_WORDS = 8  # 512 bits
    _BITS_PER_ID = 16


cdef inline uint64_t _bloom_hash(uint64_t tag) noexcept nogil:
    return _mix(tag ^ 0x9E3779B97F4A7C15ULL)


cdef inline bint _block_has(const uint64_t *block, uint64_t bits) noexcept nogil:
    """Whether ``block`` has the 7 bits that ``bits`` picks (9 bits each) set."""
    cdef int i
    cdef unsigned int position
    for i in range(7):
        position = (bits >> (9 * i)) & 511
        if not (block[position >> 6] >> (position & 63)) & 1:
            return False
    return True


cdef class Bloom:
    """The tags of a run, 16 bits an id (``blocks`` × 64 bytes). ``_index_py.Bloom`` sets the same bits."""

    cdef uint64_t *words
    cdef readonly size_t blocks

    def __cinit__(self, size_t ids):
        self.blocks = max(1, (ids * _BITS_PER_ID + 511) // 512)
        self.words = <uint64_t *>PyMem_Calloc(self.blocks * _BLOCK_WORDS, sizeof(uint64_t))
        if self.words == NULL:
            raise MemoryError()

    def __dealloc__(self):
        PyMem_Free(self.words)

    @property
    def memory_bytes(self):
        return self.blocks * _BLOCK_WORDS * sizeof(uint64_t)

    cdef inline uint64_t *_block(self, uint64_t h) noexcept nogil:
        return self.words + ((h >> 32) * self.blocks >> 32) * _BLOCK_WORDS

    cdef inline void _set(self, uint64_t tag) noexcept nogil:
        cdef uint64_t h = _bloom_hash(tag)
        cdef uint64_t *block = self._block(h)
        cdef uint64_t bits = _mix(h)
        cdef int i
        cdef unsigned int position
        for i in range(7):
            position = (bits >> (9 * i)) & 511
            block[position >> 6] |= (<uint64_t>1) << (position & 63)

    cdef inline bint _test(self, uint64_t tag) noexcept nogil:
        cdef uint64_t h = _bloom_hash(tag)
        return _block_has(self._block(h), _mix(h))

    def add_slots(self, const unsigned char[::1] slots):
        """Add the tag of every slot in ``slots`` (``FingerprintIndex.sorted_slots``)."""
        cdef const uint64_t *values = <const uint64_t *>&slots[0] if slots.shape[0] else NULL
        cdef size_t i, n = <size_t>slots.shape[0] // sizeof(uint64_t)
        with nogil:  # a spill's thread: the writer's goes on meanwhile
            for i in range(n):
                if i + 16 < n:  # random blocks: fetched ahead, the cache misses overlap
                    DRENGR_PREFETCH(self._block(_bloom_hash(values[i + 16] >> 32)))
                self._set(values[i] >> 32)

    def maybe(self, uint64_t key):
        """False when ``key``'s tag is surely not in the run."""
        return self._test(_tag(key))

    def hits(self, const uint64_t[::1] keys):
        """Positions in ``keys`` whose tag may be in the run. Each block is fetched ahead: a look-up
        costs about one cache miss however many runs there are."""
        cdef Py_ssize_t i, n = keys.shape[0]
        for i in range(n):
            DRENGR_PREFETCH(self._block(_bloom_hash(_tag(keys[i]))))
        found = []
        for i in range(n):
            if self._test(_tag(keys[i])):
                found.append(i)
        return found

    def dump(self):
        """Its bits as a read-only view, for the window file."""
        cdef unsigned char[::1] view = <unsigned char[:self.blocks * _BLOCK_WORDS * sizeof(uint64_t)]> (
            <unsigned char *>self.words
        )
        return memoryview(view).toreadonly()

    @staticmethod
    def load(size_t blocks, fill):
        """The filter ``dump`` gave, ``blocks`` long: ``fill(view)`` fills its bytes."""
        if blocks < 1:
            raise ValueError("not a dedup window's filter")
        cdef Bloom bloom = Bloom((blocks * 512) // _BITS_PER_ID)
        if bloom.blocks != blocks:
            raise ValueError("not a dedup window's filter")
        cdef unsigned char[::1] view = <unsigned char[:blocks * _BLOCK_WORDS * sizeof(uint64_t)]> (
            <unsigned char *>bloom.words
        )
        fill(memoryview(view))
        return bloom


def any_hits(list blooms, const uint64_t[::1] keys):
    """Positions in ``keys`` whose tag may be in any of ``blooms`` (the runs of a generation).

    Each key is hashed once for all the filters, and the blocks of 32 keys in
    every filter are fetched ahead before any is tested: the cache misses overlap.
    """
    cdef Py_ssize_t n = keys.shape[0], count = len(blooms), i, start, stop, b
    cdef uint64_t hashes[32]
    cdef Bloom bloom
    found = []
    if count == 0 or n == 0:
        return found
    cdef uint64_t **words = <uint64_t **>PyMem_Malloc(count * sizeof(uint64_t *))
    cdef size_t *blocks = <size_t *>PyMem_Malloc(count * sizeof(size_t))
    if words == NULL or blocks == NULL:
        PyMem_Free(words)
        PyMem_Free(blocks)
        raise MemoryError()
    for b in range(count):
        bloom = <Bloom?>blooms[b]
        words[b], blocks[b] = bloom.words, bloom.blocks
    try:
        for start in range(0, n, 32):
            stop = min(start + 32, n)
            for i in range(start, stop):
                hashes[i - start] = _bloom_hash(_tag(keys[i]))
                for b in range(count):
                    DRENGR_PREFETCH(words[b] + ((hashes[i - start] >> 32) * blocks[b] >> 32) * _BLOCK_WORDS)
            for i in range(start, stop):
                for b in range(count):
                    if _block_has(
                        words[b] + ((hashes[i - start] >> 32) * blocks[b] >> 32) * _BLOCK_WORDS,
                        _mix(hashes[i - start]),
                    ):
                        found.append(i)
                        break
    finally:
        PyMem_Free(words)
        PyMem_Free(blocks)
    return found
