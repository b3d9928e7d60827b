"""Per-model hyperparameters, validated without importing torch.

Each model in `trainers/models/<name>.py` reads its params from the class registered here under
the same name. Defaults train in minutes on CPU on the 8x8 `digits` dataset.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _odd(size: int) -> int:
    if size % 2 == 0:
        raise ValueError(f"must be odd (a centred kernel), got {size}")
    return size


OddKernel = Annotated[int, AfterValidator(_odd)]


class PixelCNNParams(Params):
    layers: int = Field(5, ge=1, le=64, description="masked residual blocks (type B)")
    channels: int = Field(32, ge=4, le=1024, description="feature maps per colour group")
    first_kernel: OddKernel = Field(7, ge=3, le=15, description="kernel of the type-A input conv")
    output_hidden: int = Field(64, ge=4, le=2048, description="1x1 head width")


class GatedPixelCNNParams(Params):
    layers: int = Field(6, ge=1, le=64, description="gated layers (vertical + horizontal stack)")
    channels: int = Field(32, ge=4, le=1024)
    kernel: OddKernel = Field(3, ge=3, le=11, description="odd kernel width of the stacks")
    conditional: bool = Field(True, description="condition on the class label (paper 2.3)")
    output_hidden: int = Field(64, ge=4, le=2048)


class PixelCNNPPParams(Params):
    nr_resnet: int = Field(1, ge=1, le=8, description="gated resnet blocks per resolution")
    nr_filters: int = Field(32, ge=4, le=512)
    nr_logistic_mix: int = Field(5, ge=1, le=20)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    weight_norm: bool = Field(
        False, description="weight-normalise every convolution (paper section 3)"
    )
    conditional: bool = Field(
        False, description="condition every gated resnet on the class label (Gated PixelCNN 2.3)"
    )


class PixelRNNParams(Params):
    layers: int = Field(2, ge=1, le=16, description="LSTM layers with residual connections")
    hidden: int = Field(32, ge=4, le=512, description="LSTM state size per colour group")
    output_hidden: int = Field(64, ge=4, le=2048)


class AutoencoderParams(Params):
    latent_dim: int = Field(16, ge=1, le=1024)
    channels: int = Field(32, ge=4, le=512)


class VAEParams(Params):
    latent_dim: int = Field(16, ge=1, le=1024)
    channels: int = Field(32, ge=4, le=512)
    decoder: Literal["auto", "bernoulli", "categorical"] = Field(
        "auto", description="auto: bernoulli for 2-level data, else a per-sub-pixel categorical"
    )
    iw_samples: int = Field(64, ge=1, le=5000, description="IWAE k at every evaluation")
    iw_samples_final: int = Field(1000, ge=1, le=5000, description="IWAE k at the last epoch")


class DCGANParams(Params):
    latent_dim: int = Field(64, ge=1, le=1024)
    generator_channels: int = Field(64, ge=4, le=1024)
    discriminator_channels: int = Field(64, ge=4, le=1024)
    beta1: float = Field(0.5, ge=0.0, lt=1.0, description="Adam beta1 (Radford et al. 4)")


PARAMS_BY_MODEL: dict[str, type[Params]] = {
    "pixelcnn": PixelCNNParams,
    "gated_pixelcnn": GatedPixelCNNParams,
    "pixelcnn_pp": PixelCNNPPParams,
    "pixelrnn_row": PixelRNNParams,
    "pixelrnn_diag": PixelRNNParams,
    "autoencoder": AutoencoderParams,
    "vae": VAEParams,
    "dcgan": DCGANParams,
}
