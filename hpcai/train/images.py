"""Images as the vision tower's processor prepares them, with LLaVA-1.5's pad-to-square.

The size, mean and standard deviation come from the tower's image processor (`preprocessor_config.json`);
a non-square image is first padded to a square with the mean colour (LLaVA-1.5's `expand2square`, its
`image_aspect_ratio pad`) instead of being squashed or cropped, then resized and normalised. Done with
Pillow and torch directly: the same result as the processor on a square image, without its per-call
overhead in the data workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from hpcai.train.shards import Member

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ImageTransform:
    size: int
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    # How a non-square image becomes size x size: "pad" to a square of the mean colour, then resize (LLaVA's
    # expand2square); "crop": resize the short edge to size, then the centre square (OpenAI CLIP, open_clip);
    # "squash": resize to size x size whatever the aspect (SigLIP's processor).
    resize: str = "pad"

    @classmethod
    def from_processor(cls, processor: Any, size: int, resize: str = "pad") -> ImageTransform:
        """The processor's normalisation at the tower's input size (the tower's config decides the size)."""
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize {resize!r}: one of {', '.join(RESIZE_MODES)}")
        mean = tuple(float(x) for x in getattr(processor, "image_mean", CLIP_MEAN))
        std = tuple(float(x) for x in getattr(processor, "image_std", CLIP_STD))
        return cls(size=size, mean=mean, std=std, resize=resize)  # type: ignore[arg-type]

    def __call__(self, path: Path | bytes) -> torch.Tensor:
        return self.normalize(self.pixels(path))

    def pixels(self, path: Path | bytes) -> torch.Tensor:
        """The image as uint8 (3, size, size): a quarter of the bytes a worker hands over as float32, and
        normalised on the device by `normalize` where it costs nothing."""
        import io

        from PIL import Image

        with Image.open(io.BytesIO(path) if isinstance(path, bytes) else path) as img:
            rgb = img.convert("RGB")
            if self.resize == "pad" and rgb.width != rgb.height:
                rgb = expand_to_square(rgb, tuple(int(m * 255) for m in self.mean))
            elif self.resize == "crop" and rgb.width != rgb.height:
                rgb = crop_to_square(rgb, self.size)
            rgb = rgb.resize((self.size, self.size), Image.Resampling.BICUBIC)
            data = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)
        return data.view(self.size, self.size, 3).permute(2, 0, 1).contiguous()

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (..., 3, H, W) -> float32, scaled to [0, 1] and normalised with the processor's mean and std."""
        mean = torch.tensor(self.mean, device=pixels.device).view(3, 1, 1)
        std = torch.tensor(self.std, device=pixels.device).view(3, 1, 1)
        return (pixels.float() / 255.0 - mean) / std


RESIZE_MODES = ("pad", "crop", "squash")


def crop_to_square(img: Any, size: int) -> Any:
    """The short edge resized to `size` (bicubic), then the centre `size` x `size` (torchvision's Resize +
    CenterCrop, as OpenAI CLIP and open_clip preprocess)."""
    from PIL import Image

    scale = size / min(img.width, img.height)
    width, height = max(size, round(img.width * scale)), max(size, round(img.height * scale))
    resized = img.resize((width, height), Image.Resampling.BICUBIC)
    left, top = (width - size) // 2, (height - size) // 2
    return resized.crop((left, top, left + size, top + size))


def expand_to_square(img: Any, background: tuple[int, ...]) -> Any:
    """The image centred on a square canvas of the background colour (LLaVA's expand2square)."""
    from PIL import Image

    side = max(img.width, img.height)
    canvas = Image.new("RGB", (side, side), background)
    canvas.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
    return canvas


def load_image(path: Path, size: int) -> torch.Tensor:
    """CLIP-normalised, padded to square: for models without a processor (the random-weight presets)."""
    return ImageTransform(size)(path)


def image_folder(data: Path) -> Path:
    """Where a data set's relative image paths point: an `images/` folder beside the data file (or inside the
    data folder) when there is one, else that folder itself."""
    folder = data.parent if data.is_file() else data
    return folder / "images" if (folder / "images").is_dir() else folder


class ImageFiles:
    """A manifest's image names resolved to files: in the folder (`images/` beside the manifest, else the
    manifest's folder), or -- for a data set staged with `hpcai stage --pack` -- to members of the tar shards
    beside it, by the same names (an `images/` prefix the packing kept is tried first)."""

    def __init__(self, data: Path):
        from hpcai.train.shards import packed_files

        self.data = data
        self.folder = image_folder(data)
        self.packed = packed_files(data)

    def resolve(self, name: str) -> Path | Member:
        if self.packed is not None:
            found = self.packed.get(f"images/{name}") or self.packed.get(name)
            if found is not None:
                return found
        return self.folder / name

    @property
    def where(self) -> str:
        if self.packed is not None:
            return f"the {len(self.packed)} files packed in {self.packed.folder}"
        return str(self.folder)


def image_bytes_or_path(image: Path | Member) -> Path | bytes:
    return image if isinstance(image, Path) else image.read()


def check_images_exist(data: Path, first: list[Path | Member], beside: str, files: ImageFiles) -> None:
    """Refuse at start when none of the first samples' images exists -- a wrong folder, not one missing file
    (a few missing files are left out and named in the workers)."""
    if first and not any(not isinstance(image, Path) or image.is_file() for image in first):
        raise SystemExit(
            f"--data {data}: none of the first samples' images is there (e.g. {first[0]}); images are read from "
            f"{files.where}: put them in an images/ folder beside the {beside}, or give the folder that holds both"
        )
