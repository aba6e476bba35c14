"""Reader for the Planetoid citation graphs (Cora, Citeseer) in their standard raw layout
(Yang, Cohen & Salakhutdinov, ICML 2016, arXiv 1603.08861; files as published in
kimiyoung/planetoid, the layout GCN, SGC, DGC and PyTorch Geometric's ``Planetoid`` read)::

    <root>/raw/ind.<name>.{x, y, tx, ty, allx, ally, graph, test.index}

x, tx, allx are Python-2 pickles of ``scipy.sparse.csr_matrix`` bag-of-words features; y, ty, ally
pickled one-hot numpy arrays; graph a pickled ``defaultdict(list)`` node -> neighbours;
test.index one node id a line.

No scipy: the pickles are read by a *restricted* unpickler whose ``find_class`` admits only the
handful of names these files use (``scipy.sparse.csr.csr_matrix``, numpy's ``ndarray``,
``dtype`` and ``_reconstruct``, ``list``, ``defaultdict``); the scipy class is replaced by a
small stand-in that keeps the matrix's pickled state (``data``, ``indices``, ``indptr``,
``_shape``), from which the features are built as a torch tensor. Any other global refuses the
file, so a tampered pickle cannot run code.

Assembly, as in the GCN/SGC/DGC loaders (``load_citation`` of github.com/yifeiwang77/DGC): node
``i < len(allx)`` has row ``i`` of allx/ally; node ``test.index[j]`` has row ``j`` of tx/ty.
Standard split: train = the first ``len(y)`` nodes (140 Cora, 120 Citeseer), validation = the next
500, test = the 1,000 nodes of test.index (sorted). Citeseer has 15 ids inside the test range that
are not in test.index (isolated nodes): their features are zero rows, as GCN pads them.

Edges: the graph dict is read as an undirected graph (``networkx.from_dict_of_lists``, which the
official code uses): every listed pair in both directions, duplicates merged, self-loops kept once
(Citeseer lists 124 nodes as their own neighbours; Cora none). Cora: 2,708 nodes, 5,278
undirected edges (10,556 directed, PyG's count), 1,433 features, 7 classes; Citeseer: 3,327 nodes,
4,552 edges plus 124 self-loops, 3,703 features, 6 classes. (The raw lists hold 10,858 and 9,464
entries, i.e. 5,429 and 4,732 "edges" counted with duplicates, the figures usually quoted.)

Deviation: the 15 Citeseer padding nodes get label -1 (no label) instead of the official code's 0
(argmax of a zero row); they are in no split, so no accuracy changes.

Where the files are looked for: ``root`` if given, else ``$UNLEARNABLE_DATA_ROOT/planetoid``,
else ``~/.cache/unlearnable/data/planetoid`` (the library's data root); ``root`` may name the
folder holding ``raw/`` or ``raw/`` itself. Nothing is downloaded.
"""
from __future__ import annotations

import collections
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data.datasets import resolve_data_root
from ..errors import UnlearnableError

NAMES = ("cora", "citeseer")
PARTS = ("x", "y", "tx", "ty", "allx", "ally", "graph")
VAL_SIZE = 500


class _CSRState:
    """Stands in for ``scipy.sparse.csr_matrix`` while unpickling: keeps the pickled state dict."""

    state: dict

    def __setstate__(self, state: dict) -> None:
        self.state = state


def _reconstruct(subtype: type, shape: tuple, dtype: object) -> np.ndarray:
    """numpy's pickle entry point for arrays: an empty array that BUILD then fills (__setstate__)."""
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"array subtype {subtype!r} is not allowed")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _dtype(*args: object) -> np.dtype:
    d = np.dtype(*args)
    if d.hasobject:
        raise pickle.UnpicklingError("object arrays are not allowed")
    return d


_ALLOWED = {
    ("scipy.sparse.csr", "csr_matrix"): _CSRState,
    ("scipy.sparse._csr", "csr_matrix"): _CSRState,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
    ("__builtin__", "list"): list,
    ("builtins", "list"): list,
    ("collections", "defaultdict"): collections.defaultdict,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a Planetoid file") from None


def read_pickle(path: str | os.PathLike) -> object:
    """Unpickle one Planetoid file (Python-2 pickle, read as latin-1) admitting only the names these
    files use; scipy CSR matrices come back as ``_CSRState`` objects."""
    with open(path, "rb") as f:
        return _RestrictedUnpickler(f, encoding="latin1").load()


def csr_to_dense(obj: object) -> torch.Tensor:
    """A pickled CSR matrix (``_CSRState``) -> dense float32 (rows, cols) tensor; duplicate entries
    are summed, as ``scipy``'s ``todense`` does."""
    if not isinstance(obj, _CSRState):
        raise UnlearnableError(f"expected a sparse CSR matrix, got {type(obj).__name__}")
    s = obj.state
    rows, cols = (int(v) for v in s["_shape"])
    indptr = torch.from_numpy(np.asarray(s["indptr"], dtype=np.int64))
    indices = torch.from_numpy(np.asarray(s["indices"], dtype=np.int64))
    data = torch.from_numpy(np.asarray(s["data"], dtype=np.float32))
    if len(indptr) != rows + 1 or len(indices) != len(data) or int(indptr[-1]) != len(data):
        raise UnlearnableError("malformed CSR matrix")
    row = torch.repeat_interleave(torch.arange(rows), indptr.diff())
    dense = torch.zeros(rows, cols)
    dense.index_put_((row, indices), data, accumulate=True)
    return dense


@dataclass
class Planetoid:
    """One citation graph with its standard split.

    ``features``: (N, F) float32 raw bag-of-words (0/1; not normalised); ``labels``: (N,) int64,
    -1 where a node has no label; ``edge_index``: (2, E) int64, both directions of every undirected
    edge plus listed self-loops once, sorted, no duplicates; ``train``/``val``/``test``: node ids."""

    name: str
    features: torch.Tensor
    labels: torch.Tensor
    edge_index: torch.Tensor
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    num_classes: int
    meta: dict = field(default_factory=dict)

    @property
    def num_nodes(self) -> int:
        return int(self.features.shape[0])

    @property
    def num_edges(self) -> int:
        """Undirected edges, not counting self-loops (Cora 5,278, Citeseer 4,552)."""
        src, dst = self.edge_index
        return int((src != dst).sum()) // 2

    @property
    def num_self_loops(self) -> int:
        src, dst = self.edge_index
        return int((src == dst).sum())


def planetoid_dir(root: str | os.PathLike | None = None) -> Path:
    """The folder holding the ``ind.*`` files: ``root`` (or its ``raw/``), else
    ``$UNLEARNABLE_DATA_ROOT/planetoid/raw``, else ``~/.cache/unlearnable/data/planetoid/raw``."""
    base = Path(root).expanduser() if root else resolve_data_root() / "planetoid"
    return base if (base / "ind.cora.x").exists() or (base / "ind.citeseer.x").exists() else base / "raw"


def graph_edges(graph: dict, num_nodes: int) -> tuple[torch.Tensor, int]:
    """The adjacency dict as a symmetric, duplicate-free (2, E) edge list (self-loops once), and the
    number of raw list entries."""
    src = [int(i) for i, ns in graph.items() for _ in ns]
    dst = [int(j) for ns in graph.values() for j in ns]
    s, d = torch.tensor(src, dtype=torch.long), torch.tensor(dst, dtype=torch.long)
    if len(s) and (min(int(s.min()), int(d.min())) < 0 or max(int(s.max()), int(d.max())) >= num_nodes):
        raise UnlearnableError(f"graph names a node outside 0..{num_nodes - 1}")
    both = torch.stack([torch.cat([s, d]), torch.cat([d, s])])
    key = torch.unique(both[0] * num_nodes + both[1])      # sorted, duplicates (and the doubled self-loops) merged
    return torch.stack([key // num_nodes, key % num_nodes]), len(src)


def load_planetoid(name: str, root: str | os.PathLike | None = None) -> Planetoid:
    """Read ``name`` ('cora' or 'citeseer') from the raw Planetoid files (see the module docstring
    for where they are looked for). Raises :class:`UnlearnableError` when a file is missing."""
    name = name.lower()
    if name not in NAMES:
        raise UnlearnableError(f"unknown Planetoid graph {name!r}; available: {', '.join(NAMES)}")
    folder = planetoid_dir(root)
    files = {p: folder / f"ind.{name}.{p}" for p in PARTS + ("test.index",)}
    missing = [str(f) for f in files.values() if not f.exists()]
    if missing:
        raise UnlearnableError(f"Planetoid {name} not found: missing {missing[0]}"
                               + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
                               + "; pass root= (e.g. ../shared/data/planetoid) or set UNLEARNABLE_DATA_ROOT")
    obj = {p: read_pickle(files[p]) for p in PARTS}
    test_index = torch.tensor([int(line) for line in files["test.index"].read_text().split()], dtype=torch.long)
    allx, tx = csr_to_dense(obj["allx"]), csr_to_dense(obj["tx"])
    ally = torch.from_numpy(np.asarray(obj["ally"])).argmax(1)
    ty = torch.from_numpy(np.asarray(obj["ty"])).argmax(1)
    num_train = int(np.asarray(obj["y"]).shape[0])
    n_all = allx.shape[0]
    if tx.shape[0] != len(test_index) or ty.shape[0] != len(test_index) or ally.shape[0] != n_all:
        raise UnlearnableError(f"Planetoid {name}: inconsistent row counts")
    num_nodes = max(n_all, int(test_index.max()) + 1)
    features = torch.zeros(num_nodes, allx.shape[1])
    labels = torch.full((num_nodes,), -1, dtype=torch.long)
    features[:n_all], labels[:n_all] = allx, ally
    features[test_index], labels[test_index] = tx, ty
    edge_index, raw_pairs = graph_edges(obj["graph"], num_nodes)
    num_classes = int(np.asarray(obj["ally"]).shape[1])
    return Planetoid(
        name=name, features=features, labels=labels, edge_index=edge_index,
        train=torch.arange(num_train), val=torch.arange(num_train, num_train + VAL_SIZE),
        test=torch.sort(test_index).values, num_classes=num_classes,
        meta={"folder": str(folder), "raw_list_entries": raw_pairs,
              "unlabelled_nodes": int((labels < 0).sum())})


__all__ = ["Planetoid", "load_planetoid", "planetoid_dir", "read_pickle", "csr_to_dense", "graph_edges", "NAMES"]
