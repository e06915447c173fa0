"""course_lib: the library that the notebooks of *Stable Diffusion from Scratch* grow.

Every part is built by hand in a notebook first; the library keeps the version that later
notebooks import. Each public function's docstring names the notebook that defines it.
"""

__version__ = "0.1.0"
