"""Pure-Python twin of connscan._mmdb_c: the MaxMind DB search-tree walker.

Same function, same results and the same error messages as the compiled module; it is the
fallback without a compiler and the oracle the tests compare the native walk with.
"""
from __future__ import annotations

import numpy as np

_MESSAGES = {
    "deep": "search tree deeper than {bits} bits at node {node} (corrupt tree)",
    "many": "search tree visits more than {max_nodes} nodes (cycles or shared subtrees)",
    "pointer": "record {node} points outside the data section",
}


def _record_reader(buf, record_size: int):
    """A function (node, right) -> record value for this record size."""
    if record_size == 24:
        def read(node, right):
            offset = node * 6 + right * 3
            return int.from_bytes(buf[offset:offset + 3], "big")
    elif record_size == 28:
        def read(node, right):
            offset = node * 7
            if right:
                return int.from_bytes(buf[offset + 3:offset + 7], "big") & 0x0FFFFFFF
            value = int.from_bytes(buf[offset:offset + 4], "big")
            return (value >> 8) | ((value & 0xF0) << 20)
    else:
        def read(node, right):
            offset = node * 8 + right * 4
            return int.from_bytes(buf[offset:offset + 4], "big")
    return read


def walk(buf, node_count: int, record_size: int, bits: int, data_size: int, max_nodes: int):
    """Leaves of the search tree: (hi, lo, record, nodes_visited); see connscan._mmdb_c.walk."""
    if record_size not in (24, 28, 32):
        raise ValueError(f"unsupported record size {record_size}")
    if bits not in (32, 128):
        raise ValueError(f"bad walk: {bits} bits")
    buf = memoryview(buf).cast("B")
    if node_count >= 1 << 32 or node_count * (record_size // 4) > len(buf):
        raise ValueError(f"search tree of {node_count} nodes exceeds the file")
    read = _record_reader(buf, record_size)

    starts: list[int] = []
    records: list[int] = []
    visited = 0
    stack = [(0, 0, 0)]  # (node or record value, depth, address prefix)
    while stack:
        node, depth, prefix = stack.pop()
        if node >= node_count:
            if node != node_count and not 0 <= node - node_count - 16 < data_size:
                raise ValueError(_MESSAGES["pointer"].format(node=node))
            if not records or records[-1] != node:
                starts.append(prefix)
                records.append(node)
            continue
        if depth == bits:
            raise ValueError(_MESSAGES["deep"].format(bits=bits, node=node))
        visited += 1
        if visited > max_nodes:
            raise ValueError(_MESSAGES["many"].format(max_nodes=max_nodes))
        # Right pushed first so that the left branch (lower addresses) comes out first.
        stack.append((read(node, 1), depth + 1, prefix | (1 << (bits - 1 - depth))))
        stack.append((read(node, 0), depth + 1, prefix))

    hi = np.array([s >> 64 for s in starts], dtype=np.uint64)
    lo = np.array([s & 0xFFFFFFFFFFFFFFFF for s in starts], dtype=np.uint64)
    return hi, lo, np.array(records, dtype=np.uint32), visited
