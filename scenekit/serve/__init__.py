"""The web demo: an HTTP API (`scenekit.serve.app`) and one static page that draws its answers.

`scenekit serve --checkpoint best.pt` starts it; see `scenekit.serve.app` for the endpoints and the limits.
"""
