"""scenekit: visual scene understanding methods, implemented faithfully to their papers."""

__version__ = "0.1.0"
