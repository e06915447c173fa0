"""The diffusion layer: the mathematics of diffusion, on any network given as a function.

Noise schedules (``schedules``), the forward process and the prediction types (``forward``),
rectified flow (``rectified_flow``), guidance and prompt styles (``guidance``), and the samplers:
one interface (``samplers.sample``) over ``ddpm_ddim``, ``plms``, ``dpm_solver`` and ``flow_euler``,
with the model wrapper (``denoiser``) and the timestep grids (``timesteps``). It imports only
``course_lib.core``: a sampler sees ``model_fn(x, t)``, never a network class.
"""

from course_lib.diffusion.forward import q_sample
from course_lib.diffusion.guidance import apply_style, guided_model_fn
from course_lib.diffusion.rectified_flow import FlowMatchSchedule
from course_lib.diffusion.samplers import SAMPLERS, SampleResult, available_samplers, sample, sampler_timesteps
from course_lib.diffusion.schedules import NoiseSchedule, make_schedule

__all__ = ["q_sample", "apply_style", "guided_model_fn", "FlowMatchSchedule", "SAMPLERS", "SampleResult",
           "available_samplers", "sample", "sampler_timesteps", "NoiseSchedule", "make_schedule"]
