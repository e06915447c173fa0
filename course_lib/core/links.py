"""Where the course lives online: the one place that names the repository. Not built in a notebook.

Change ORG, REPO or BRANCH here and run ``python course.py badges`` to update every notebook.
"""

ORG = "sd-from-scratch"
REPO = "stable-diffusion-from-scratch"
BRANCH = "main"
REPO_URL = f"https://github.com/{ORG}/{REPO}"
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"


def colab_url(notebook: str) -> str:
    """The Colab address of a notebook, e.g. ``colab_url("00_welcome.ipynb")``."""
    return f"https://colab.research.google.com/github/{ORG}/{REPO}/blob/{BRANCH}/notebooks/{notebook}"


def colab_badge(notebook: str) -> str:
    """The markdown of the "Open in Colab" badge for a notebook."""
    return f"[![Open In Colab]({BADGE_IMAGE})]({colab_url(notebook)})"
