"""Models: backbones and one file per family (localizer, ...), each with its training recipe."""
