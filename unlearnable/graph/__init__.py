"""Graph learning: the Planetoid citation graphs (``planetoid``), Decoupled Graph Convolution with
SGC as its special case K = T (``dgc``; Wang et al., NeurIPS 2021, arXiv 2102.10739), and a kNN-graph
DGC learner over frozen image features used as a victim of protected images (``victim``)."""
from .dgc import DGCConfig, dgc_propagate, normalized_adjacency, run_dgc, sgc_propagate, train_linear
from .planetoid import Planetoid, load_planetoid
from .victim import GraphVictimConfig, graph_victim, knn_graph

__all__ = ["DGCConfig", "dgc_propagate", "sgc_propagate", "normalized_adjacency", "run_dgc", "train_linear",
           "Planetoid", "load_planetoid", "GraphVictimConfig", "graph_victim", "knn_graph"]
