"""Faces: find every face in a photo (MTCNN, ``detect.py``), align it to the ArcFace 112 × 112
template by a similarity transform, and paste crop-space noise back at full resolution within the
budget (``align.py``)."""
from .align import TEMPLATE, align, fit_similarity, paste_back
from .detect import Face, detect_faces

__all__ = ["Face", "TEMPLATE", "align", "detect_faces", "fit_similarity", "paste_back"]
