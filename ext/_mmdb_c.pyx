# cython: boundscheck=False, wraparound=False, cdivision=True, language_level=3
"""MaxMind DB search-tree walker: every leaf of the tree, once, in address order.

The twin is connscan._mmdb_py (same function, same results, same errors).
"""
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, realloc
from libc.string cimport memcpy

import numpy as np

cdef enum WalkStatus:
    WALK_OK = 0
    WALK_NO_MEMORY = 1
    WALK_TOO_DEEP = 2        # still inside the tree after `bits` bits
    WALK_TOO_MANY_NODES = 3  # cycles or shared subtrees: work bound exceeded
    WALK_BAD_POINTER = 4     # data pointer outside the data section

# One table from status to message (the twin raises the same texts).
_MESSAGES = {
    WALK_TOO_DEEP: "search tree deeper than {bits} bits at node {node} (corrupt tree)",
    WALK_TOO_MANY_NODES: "search tree visits more than {max_nodes} nodes (cycles or shared subtrees)",
    WALK_BAD_POINTER: "record {node} points outside the data section",
}

cdef struct Pending:
    uint64_t node     # node index, or a record value >= node_count
    int depth         # bits consumed so far
    uint64_t hi       # address prefix, the `bits`-bit address as (hi, lo)
    uint64_t lo

cdef struct Leaves:
    uint64_t *hi
    uint64_t *lo
    uint32_t *record
    Py_ssize_t count
    Py_ssize_t capacity

cdef struct Walk:
    const uint8_t *tree
    uint64_t node_count
    int record_size
    int bits
    uint64_t data_size
    uint64_t max_nodes
    uint64_t visited
    uint64_t bad_node     # the node or record value behind an error


cdef inline uint64_t read_record(const Walk *w, uint64_t node, int right) noexcept nogil:
    cdef const uint8_t *p
    if w.record_size == 24:
        p = w.tree + node * 6 + right * 3
        return (<uint64_t>p[0] << 16) | (<uint64_t>p[1] << 8) | p[2]
    if w.record_size == 28:
        p = w.tree + node * 7
        if right:
            return ((<uint64_t>(p[3] & 0x0F)) << 24) | (<uint64_t>p[4] << 16) | (<uint64_t>p[5] << 8) | p[6]
        return ((<uint64_t>(p[3] & 0xF0)) << 20) | (<uint64_t>p[0] << 16) | (<uint64_t>p[1] << 8) | p[2]
    p = w.tree + node * 8 + right * 4
    return (<uint64_t>p[0] << 24) | (<uint64_t>p[1] << 16) | (<uint64_t>p[2] << 8) | p[3]


cdef int grow(Leaves *out) noexcept nogil:
    cdef Py_ssize_t capacity = out.capacity * 2 if out.capacity else 4096
    cdef void *p
    p = realloc(out.hi, capacity * sizeof(uint64_t))
    if p == NULL:
        return WALK_NO_MEMORY
    out.hi = <uint64_t *>p
    p = realloc(out.lo, capacity * sizeof(uint64_t))
    if p == NULL:
        return WALK_NO_MEMORY
    out.lo = <uint64_t *>p
    p = realloc(out.record, capacity * sizeof(uint32_t))
    if p == NULL:
        return WALK_NO_MEMORY
    out.record = <uint32_t *>p
    out.capacity = capacity
    return WALK_OK


cdef int emit(Walk *w, Leaves *out, const Pending *leaf) noexcept nogil:
    """Validate a leaf record and append it, merged with an equal predecessor."""
    cdef uint64_t value = leaf.node
    if value != w.node_count and (value < w.node_count + 16
                                  or value - w.node_count - 16 >= w.data_size):
        w.bad_node = value
        return WALK_BAD_POINTER
    if out.count and out.record[out.count - 1] == value:
        return WALK_OK
    if out.count == out.capacity and grow(out) != WALK_OK:
        return WALK_NO_MEMORY
    out.hi[out.count] = leaf.hi
    out.lo[out.count] = leaf.lo
    out.record[out.count] = <uint32_t>value
    out.count += 1
    return WALK_OK


cdef int walk_tree(Walk *w, Leaves *out) noexcept nogil:
    """Depth-first, left first, so leaves come out sorted by address."""
    cdef Pending stack[130]   # at most one pending right branch per depth, plus the root
    cdef Pending top, child
    cdef int size = 1
    cdef int status
    cdef int position
    stack[0].node = 0
    stack[0].depth = 0
    stack[0].hi = 0
    stack[0].lo = 0
    while size:
        size -= 1
        top = stack[size]
        if top.node >= w.node_count:
            status = emit(w, out, &top)
            if status != WALK_OK:
                return status
            continue
        if top.depth == w.bits:
            w.bad_node = top.node
            return WALK_TOO_DEEP
        w.visited += 1
        if w.visited > w.max_nodes:
            return WALK_TOO_MANY_NODES
        child.depth = top.depth + 1
        position = w.bits - 1 - top.depth
        child.hi = top.hi
        child.lo = top.lo
        if position >= 64:
            child.hi |= (<uint64_t>1) << (position - 64)
        else:
            child.lo |= (<uint64_t>1) << position
        child.node = read_record(w, top.node, 1)
        stack[size] = child
        size += 1
        child.hi = top.hi
        child.lo = top.lo
        child.node = read_record(w, top.node, 0)
        stack[size] = child
        size += 1
    return WALK_OK


def walk(const uint8_t[::1] buf, uint64_t node_count, int record_size, int bits,
         uint64_t data_size, uint64_t max_nodes):
    """Leaves of the search tree: (hi, lo, record, nodes_visited).

    buf: the whole database; the tree is its first node_count nodes of record_size bits.
    Walks ``bits`` bits (32: IPv4 tree, 128: IPv6 tree) from the root. ``hi``/``lo``
    (uint64) are the first address of each leaf as a ``bits``-bit integer, ``record``
    (uint32) its record value (node_count = empty, larger = data pointer); adjacent leaves
    with equal records are merged. ``data_size`` bounds the data pointers, ``max_nodes``
    the work. Raises ValueError for a corrupt tree, MemoryError when out of memory.
    """
    if record_size not in (24, 28, 32):
        raise ValueError(f"unsupported record size {record_size}")
    if bits not in (32, 128):
        raise ValueError(f"bad walk: {bits} bits")
    if node_count >= 1 << 32 or node_count * (record_size // 4) > <uint64_t>buf.shape[0]:
        raise ValueError(f"search tree of {node_count} nodes exceeds the file")
    cdef Walk w
    w.tree = &buf[0] if buf.shape[0] else NULL
    w.node_count = node_count
    w.record_size = record_size
    w.bits = bits
    w.data_size = data_size
    w.max_nodes = max_nodes
    w.visited = 0
    w.bad_node = 0
    cdef Leaves out
    out.hi = NULL
    out.lo = NULL
    out.record = NULL
    out.count = 0
    out.capacity = 0
    cdef int status
    try:
        with nogil:
            status = walk_tree(&w, &out)
        if status == WALK_NO_MEMORY:
            raise MemoryError("MaxMind DB walk: out of memory")
        if status != WALK_OK:
            raise ValueError(_MESSAGES[status].format(bits=bits, node=w.bad_node,
                                                      max_nodes=max_nodes))
        hi = np.empty(out.count, dtype=np.uint64)
        lo = np.empty(out.count, dtype=np.uint64)
        record = np.empty(out.count, dtype=np.uint32)
        if out.count:
            copy_out(hi, lo, record, &out)
        return hi, lo, record, int(w.visited)
    finally:
        free(out.hi)
        free(out.lo)
        free(out.record)


cdef void copy_out(uint64_t[::1] hi, uint64_t[::1] lo, uint32_t[::1] record,
                   const Leaves *out) noexcept:
    memcpy(&hi[0], out.hi, out.count * sizeof(uint64_t))
    memcpy(&lo[0], out.lo, out.count * sizeof(uint64_t))
    memcpy(&record[0], out.record, out.count * sizeof(uint32_t))
