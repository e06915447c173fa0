"""The models layer: the networks, each a ``torch.nn.Module`` that knows no data set and no sampler.

The residual and resampling blocks (``resnet``, ``resample``), attention (``attention``), time
embeddings (``embeddings``), the U-Net (``unet``), the autoencoder (``vae``, ``posterior``), the
tokenizer (``tokenizer``, ``bpe``), CLIP (``clip``: ``clip_text``, ``clip_image``, ``clip_contrastive``),
SD 3's MMDiT (``mmdit``, ``patch_embed``), LoRA (``lora``: ``lora_layers``, ``lora_file``) and the
small networks of notebooks 01-02 and the segmenter. A network imports only ``course_lib.core`` and
torch: no world, sampler, trainer or pipeline. Reading diffusers' or transformers' files is
``course_lib.pipeline.convert``'s job, not a network's.
"""

from course_lib.models.clip import CLIPTextConfig, CLIPTextEncoder
from course_lib.models.mmdit import MMDiT, MMDiTConfig
from course_lib.models.resnet import ResnetBlock2D
from course_lib.models.tokenizer import CLIPStyleTokenizer, train_bpe
from course_lib.models.unet import UNet, UNetConfig
from course_lib.models.vae import AutoencoderConfig, AutoencoderKL

__all__ = ["CLIPTextConfig", "CLIPTextEncoder", "MMDiT", "MMDiTConfig", "ResnetBlock2D", "CLIPStyleTokenizer",
           "train_bpe", "UNet", "UNetConfig", "AutoencoderConfig", "AutoencoderKL"]
