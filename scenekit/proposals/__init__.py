"""Region proposals: Felzenszwalb-Huttenlocher over-segmentation and Selective Search (R-CNN's proposals)."""

from scenekit.proposals.graph_segment import felzenszwalb
from scenekit.proposals.selective_search import PRESETS, Strategy, selective_search

__all__ = ["felzenszwalb", "selective_search", "Strategy", "PRESETS"]
