"""The wire with adapters: the server's base edits are not part of a reply's expected arrays."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from fedprivacy import adapters, wire
from fedprivacy.strategies.reply_check import array_spec

pytestmark = pytest.mark.unit


def test_replies_need_not_echo_the_base_edits():
    # Prepare
    arrays = ArrayRecord({"a.lora_A.weight": Array(np.zeros((2, 3), dtype=np.float32)),
                          wire.BASE_EDITS: Array(np.arange(4, dtype=np.int64))})
    # Execute
    spec = array_spec(arrays)
    # Assert
    assert spec == {"a.lora_A.weight": ((2, 3), "float32")}


def test_bytes_count_every_array():
    # Prepare
    arrays = ArrayRecord({"a": Array(np.zeros((2, 3), dtype=np.float32)),
                          "b": Array(np.zeros(5, dtype=np.int64))})
    # Execute / Assert: the values' bytes and one .npy header per array
    assert adapters.num_bytes(arrays) == 2 * 3 * 4 + 5 * 8 + 2 * 128
