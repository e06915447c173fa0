"""The training layer: one loop (``loop.TrainLoop``) and, per model, only its data and its loss.

``diffusion`` (+ ``diffusion_data``, ``diffusion_checkpoint``), ``clip`` (+ ``clip_model``, ``clip_eval``),
``autoencoder`` (+ ``latents``), ``text_to_image``, ``gan``, ``toy_diffusion``, ``judges``,
``segmentation``, ``depth`` and ``lora`` train the course's networks on the loop; ``state`` and
``state_files`` (resumable state), ``distributed``, ``precision`` and ``sharding`` (torchrun, autocast,
batch slices) and ``run_config`` (the scripts' config files) are its plumbing. It may import every
layer below it (core, worlds, evaluate, models, diffusion), never the pipeline.
"""
