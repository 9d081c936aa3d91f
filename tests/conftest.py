"""Test-wide settings.

Under CI (the CI environment variable set), hypothesis runs derandomized: the same examples every run, so a red
build always means a change in the code, never a newly drawn example. Locally it explores new examples each run.
"""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
