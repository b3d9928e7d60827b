"""Sample grids from the runs' storage: resized for display, and the gallery widget.

The bytes come through `JobStore.get_image`, whose RunStorage keeps a read cache of its own
(and forgets a deleted job's files), so only the resized copies are cached here. A stored image
never changes (one PNG per job, name and epoch), so caching those by that key is always right,
and a job with a hundred grids opens by reading only the few it shows. A file that is missing
or damaged shows its message in its place; the rest of the gallery still draws.
"""

from __future__ import annotations

import io

import streamlit as st
from PIL import Image

from dashboard import connection
from jobs.run_storage import ImageUnreadable
from jobs.store import ImageNotFound, ImageRef

THUMBNAIL_PX = 120
DISPLAY_PX = 384
# A file missing or damaged in storage, or an index entry deleted since the gallery listed it.
UNREADABLE = (ImageUnreadable, ImageNotFound)
STRIP_LENGTH = 8  # thumbnails of evenly spaced epochs under the selected grid
CAPTIONS = {
    "samples": "Fixed-seed samples: each cell is drawn from the same noise at every epoch.",
    "reconstructions": "Reconstructions: real images above, the model's reconstruction below.",
    "interpolations": "Interpolations between pairs of images through the latent space.",
    "completions": "Completions: the top half is real, the bottom half is sampled.",
}


@st.cache_data(max_entries=4096, show_spinner=False)
def resized_png(
    source: str, job_id: str, name: str, epoch: int, trial: str | None, width: int
) -> bytes:
    """The image at about `width` pixels: shrunk smoothly, or grown by whole pixels so the
    pixels of a tiny 8x8-digit grid stay crisp squares. `source` is part of the cache key only:
    another Redis holds other images. An unreadable file raises, and st.cache_data keeps no
    failure, so the next rerun reads it again."""
    del source
    image = Image.open(io.BytesIO(connection.store().get_image(job_id, name, epoch, trial)))
    if image.width > width:
        height = max(round(image.height * width / image.width), 1)
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    else:
        factor = max(width // image.width, 1)
        size = (image.width * factor, image.height * factor)
        image = image.resize(size, Image.Resampling.NEAREST)
    output = io.BytesIO()
    image.save(output, format="PNG")
    return output.getvalue()


def epochs_by_name(refs: list[ImageRef]) -> dict[str, list[int]]:
    """Image names with their distinct epochs ascending; "samples" first, the rest by name."""
    epochs: dict[str, set[int]] = {}
    for ref in refs:
        epochs.setdefault(ref.name, set()).add(ref.epoch)
    names = sorted(epochs, key=lambda name: (name != "samples", name))
    return {name: sorted(epochs[name]) for name in names}


def evenly_spaced(epochs: list[int], count: int) -> list[int]:
    if len(epochs) <= count:
        return epochs
    step = (len(epochs) - 1) / (count - 1)
    return [epochs[round(index * step)] for index in range(count)]


def unreadable(name: str, epoch: int, error: Exception) -> None:
    st.warning(f"{name}, epoch {epoch}: {error}")


def sized_image(
    job_id: str, trial: str | None, name: str, epoch: int, width: int, caption: str
) -> None:
    """One image at about `width` pixels, or in its place the warning that names its file."""
    try:
        png = resized_png(connection.data_source(), job_id, name, epoch, trial, width)
    except UNREADABLE as exc:
        unreadable(name, epoch, exc)
        return
    st.image(png, caption=caption)


def image_series(job_id: str, trial: str | None, name: str, epochs: list[int], key: str) -> None:
    """One image name: the grid at the chosen epoch, a download, and a strip of other epochs."""
    epoch = epochs[-1]
    if len(epochs) > 1:
        epoch = st.select_slider("Epoch", options=epochs, value=epochs[-1], key=f"{key}.epoch")
    full_size = st.toggle("Full size", key=f"{key}.full")
    try:
        png = connection.store().get_image(job_id, name, epoch, trial)
    except UNREADABLE as exc:
        unreadable(name, epoch, exc)
    else:
        source = connection.data_source()
        shown = png if full_size else resized_png(source, job_id, name, epoch, trial, DISPLAY_PX)
        st.image(shown, caption=f"{CAPTIONS.get(name, name)} Epoch {epoch}.")
        label = f"{job_id}-{trial}" if trial else job_id
        st.download_button(
            "Download PNG",
            data=png,
            file_name=f"{label}-{name}-epoch{epoch:04d}.png",
            mime="image/png",
            key=f"{key}.download",
        )
    strip = evenly_spaced(epochs, STRIP_LENGTH)
    if len(strip) > 1:
        for column, strip_epoch in zip(st.columns(len(strip)), strip, strict=True):
            with column:
                sized_image(job_id, trial, name, strip_epoch, THUMBNAIL_PX, f"epoch {strip_epoch}")


def gallery(job_id: str, trial: str | None, refs: list[ImageRef], key: str) -> None:
    """A tab per image name the job stored (samples, reconstructions, completions, ...)."""
    names = epochs_by_name(refs)
    if not names:
        st.info("No images yet: the first grid appears after the first sampled epoch.")
        return
    for tab, (name, epochs) in zip(st.tabs(list(names)), names.items(), strict=True):
        with tab:
            image_series(job_id, trial, name, epochs, key=f"{key}.{name}")
