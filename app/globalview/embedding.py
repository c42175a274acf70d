"""The joint embedding of one head's queries and keys (AttentionViz, Yeh et al., 2023): pure numpy,
plus t-SNE (openTSNE) and UMAP (umap-learn), imported only when asked for.

Attention reads q . k through a softmax over keys, which leaves two things free (docs/analyses.md,
"Global view"): adding one vector to every key adds a constant to each query's row of scores, and
scaling queries by c and keys by 1/c leaves every product unchanged. :func:`normalise` uses both,
so that the query and key clouds overlap and have comparable sizes, and distance in the picture
follows attention instead of the offset between the two clouds.
"""

from __future__ import annotations

import warnings

import numpy as np

METHODS = ("pca", "tsne", "umap")
SEED = 0  # t-SNE and UMAP start from a fixed state: a head's picture is the same on every server


def normalise(queries: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[n, d] queries and [m, d] keys -> (queries * c, keys / c - mean(keys / c) + mean(queries * c)).

    ``c = sqrt(mean ||k|| / mean ||q||)`` makes the mean query norm equal the mean key norm; the
    translation then puts the key centroid on the query centroid. Scaling comes first because a
    scaling about the origin done after the translation would move the two centroids apart
    again. Every q_i . k_j changes by a constant per query i (q_i . (mean q - mean k) after the
    scaling), so each softmax row, the head's attention, is exactly what it was.
    """
    queries, keys = np.asarray(queries, np.float64), np.asarray(keys, np.float64)
    query_norm = np.linalg.norm(queries, axis=1).mean()
    key_norm = np.linalg.norm(keys, axis=1).mean()
    c = np.sqrt(key_norm / query_norm) if query_norm > 0 and key_norm > 0 else 1.0
    scaled_queries, scaled_keys = queries * c, keys / c
    return scaled_queries, scaled_keys - scaled_keys.mean(axis=0) + scaled_queries.mean(axis=0)


def pca_2d(points: np.ndarray) -> np.ndarray:
    """[n, d] -> [n, 2]: the points centred and projected on the two leading principal axes
    (eigenvectors of the covariance, largest eigenvalue first). Each axis's sign is fixed so that
    its largest loading is positive, so one head always gives one picture."""
    centred = points - points.mean(axis=0)
    values, vectors = np.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
    axes = vectors[:, ::-1][:, :2]
    axes *= np.where(axes[np.abs(axes).argmax(axis=0), [0, 1]] < 0, -1.0, 1.0)
    return centred @ axes


def tsne_2d(points: np.ndarray) -> np.ndarray:
    """[n, d] -> [n, 2] by openTSNE (FFT-accelerated t-SNE, PCA initialisation)."""
    from openTSNE import TSNE

    return np.asarray(TSNE(n_components=2, random_state=SEED, n_jobs=1, verbose=False).fit(points))


def umap_2d(points: np.ndarray) -> np.ndarray:
    """[n, d] -> [n, 2] by umap-learn (15 neighbours, its defaults). Its import warns that
    TensorFlow (for ParametricUMAP, unused here) is missing: that warning is dropped."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Tensorflow not installed", ImportWarning)
        import umap

    return umap.UMAP(n_components=2, random_state=SEED, n_jobs=1).fit_transform(points)


PROJECTIONS = {"pca": pca_2d, "tsne": tsne_2d, "umap": umap_2d}


def joint_embedding(queries: np.ndarray, keys: np.ndarray, method: str = "pca") -> np.ndarray:
    """[n, d] queries and [m, d] keys of one head -> [n + m, 2] float32 positions (queries first),
    scaled into [-1, 1] around the origin so that float16 keeps them to ~1e-3."""
    scaled_queries, scaled_keys = normalise(queries, keys)
    positions = PROJECTIONS[method](np.concatenate([scaled_queries, scaled_keys]).astype(np.float32))
    positions = np.asarray(positions, np.float64)
    positions -= (positions.max(axis=0) + positions.min(axis=0)) / 2
    extent = np.abs(positions).max()
    return (positions / extent if extent > 0 else positions).astype(np.float32)
