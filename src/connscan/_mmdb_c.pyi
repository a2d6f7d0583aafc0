"""Type stub of the compiled MaxMind DB walker (twin: connscan._mmdb_py)."""
import numpy as np
import numpy.typing as npt

def walk(
    buf: bytes | memoryview,
    node_count: int,
    record_size: int,
    bits: int,
    data_size: int,
    max_nodes: int,
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64], npt.NDArray[np.uint32], int]: ...
