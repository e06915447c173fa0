"""course_lib: the library that the notebooks of *Stable Diffusion from Scratch* grow.

Every part is built by hand in a notebook first; the library keeps the version that later
notebooks import. A docstring names the notebook that defines a part ("Defined in notebook NN";
tests/test_provenance.py checks that the notebook does). The layers, each importing only those
below it (checked by ``lint-imports``, contracts in pyproject.toml):

    generate      the command line: python -m course_lib.generate "a red circle above a blue square"
    pipeline      where the parts meet: TextToImagePipeline, its SD-style YAML config, editing,
                  widgets, and convert/ (public weights: the only code that maps their names)
    train         the one training loop (train.loop) and each model's loss and data
    evaluate      the judges and measures; they import no generative model
    models | diffusion | worlds   networks | schedules, samplers, guidance | the data (independent)
    core          device and seeding, plotting, checkpoint storage, paths
"""

__version__ = "0.1.0"
