"""Near-duplicate images: a perceptual hash of the decoded pixels, and pairs closer than a threshold.

Two searches, both exact and blockwise (memory grows with block x images, never images x images):
  - features: cosine similarity of L2-normalised bottleneck features above a threshold (faiss IndexFlatIP);
  - perceptual hash: 64-bit DCT pHash within a Hamming distance (faiss IndexBinaryFlat).
A pair whose images sit in two splits is a leak: the model is scored on an image it (nearly) trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

HASH_SIDE = 32   # the grey image the DCT runs on
HASH_LOW = 8     # the 8x8 lowest frequencies give the 64 bits
HASH_BITS = HASH_LOW * HASH_LOW
BLOCK = 4096     # query rows per search call: bounds the memory of one call


def phash(image: Image.Image) -> str:
    """64-bit perceptual hash (pHash) of a decoded image, as 16 hex digits.

    Grey, 32x32 (Lanczos), 2-D DCT-II, the 8x8 lowest frequencies, one bit per coefficient above their median.
    Resizing, re-encoding and small colour changes move few bits; another photo differs in about half.
    Chosen over dHash (gradient signs) because low DCT frequencies ignore the JPEG artefacts and resampling
    noise that flip gradient signs in flat areas.
    """
    from scipy.fft import dctn

    grey = image.convert("L").resize((HASH_SIDE, HASH_SIDE), Image.Resampling.LANCZOS, reducing_gap=2.0)
    low = dctn(np.asarray(grey, np.float64), type=2, norm="ortho")[:HASH_LOW, :HASH_LOW]
    bits = (low > np.median(low)).ravel()
    return f"{int(''.join('1' if bit else '0' for bit in bits), 2):0{HASH_BITS // 4}x}"


def hash_codes(hashes: list[str]) -> np.ndarray:
    """(N, 8) uint8 codes of hex hashes, the layout faiss's binary indexes take."""
    if not hashes:
        return np.zeros((0, HASH_BITS // 8), np.uint8)
    return np.frombuffer(b"".join(bytes.fromhex(h) for h in hashes), np.uint8).reshape(len(hashes), -1)


def hamming(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()


def _pairs(index, queries: np.ndarray, radius, block: int, desc: str | None):
    """(i, j, value) arrays with i < j from `index.range_search` over `queries` in blocks of rows."""
    from tqdm import tqdm

    first, second, values = [], [], []
    starts = range(0, len(queries), block)
    for start in tqdm(starts, desc=desc, unit="block", disable=desc is None or len(starts) < 2, mininterval=2.0):
        lims, found, neighbours = index.range_search(queries[start : start + block], radius)
        rows = start + np.repeat(np.arange(len(lims) - 1), np.diff(lims).astype(np.int64))
        keep = rows < neighbours  # each pair once, and no image with itself
        first.append(rows[keep])
        second.append(neighbours[keep].astype(np.int64))
        values.append(np.asarray(found)[keep])
    if not first:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    i, j, v = np.concatenate(first), np.concatenate(second), np.concatenate(values)
    order = np.lexsort((j, i))
    return i[order], j[order], v[order]


def normalised(features: np.ndarray) -> np.ndarray:
    """float32 (N, channels) unit vectors; a spatial map (pooling: flatten) is averaged to its channels first."""
    x = np.asarray(features, np.float32)
    if x.ndim > 2:
        x = x.reshape(len(x), -1, x.shape[-1]).mean(axis=1)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), np.float32)


def feature_pairs(features: np.ndarray, threshold: float, block: int = BLOCK, desc: str | None = None):
    """(i, j, cosine similarity) with i < j and similarity > threshold, exact (faiss inner product)."""
    import faiss

    x = normalised(features)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    i, j, sim = _pairs(index, x, float(threshold), block, desc)
    return i, j, sim.astype(np.float64)


def hash_pairs(hashes: list[str], max_distance: int, block: int = BLOCK, desc: str | None = None):
    """(i, j, Hamming distance) with i < j and distance <= max_distance, exact (faiss binary index)."""
    import faiss

    codes = hash_codes(hashes)
    index = faiss.IndexBinaryFlat(HASH_BITS)
    index.add(codes)
    i, j, distance = _pairs(index, codes, int(max_distance) + 1, block, desc)  # faiss keeps distance < radius
    return i, j, distance.astype(np.int64)


def groups(n: int, pairs) -> list[int]:
    """Connected components of `pairs` ((i, j) index pairs) over n items: each item's smallest member."""
    parent = list(range(n))

    def root(k: int) -> int:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for a, b in pairs:
        ra, rb = root(int(a)), root(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return [root(k) for k in range(n)]


@dataclass(frozen=True)
class Pair:
    a: int
    b: int
    similarity: float       # cosine similarity of the features
    hash_distance: int      # Hamming distance of the pHashes (of 64 bits)
    by_features: bool
    by_hash: bool


def find_pairs(features: np.ndarray, hashes: list[str], threshold: float, max_distance: int,
               block: int = BLOCK) -> list[Pair]:
    """Every pair close by features or by hash, with both measures, ordered by (a, b)."""
    x = normalised(features)
    fi, fj, _ = feature_pairs(x, threshold, block, desc="audit: feature search")
    hi, hj, _ = hash_pairs(hashes, max_distance, block, desc="audit: hash search")
    by_features = set(zip(fi.tolist(), fj.tolist(), strict=True))
    by_hash = set(zip(hi.tolist(), hj.tolist(), strict=True))
    pairs = []
    for a, b in sorted(by_features | by_hash):
        pairs.append(Pair(a, b, float(np.dot(x[a], x[b])), hamming(hashes[a], hashes[b]),
                          (a, b) in by_features, (a, b) in by_hash))
    return pairs
