"""The `synthesize` stage: the demo's shapes, only when they are the data."""

from __future__ import annotations

from pathlib import Path

from multitag.config import Params
from multitag.layout import Layout


def synthesize_stage(params: Params, layout: Layout = Layout()) -> Path:
    """Generate the demo's shapes, only when they are the data; a photo source generates none.

    The folder still exists afterwards (empty but for a note if it never held shapes), because
    it is the `synthesize` stage's DVC out and `dvc commit` needs every out on disk.
    """
    from multitag.data.sources import synthetic

    target = layout.synthetic
    if params.data.source != "synthetic":
        target.mkdir(parents=True, exist_ok=True)
        if not any(target.iterdir()):
            (target / "NOT_GENERATED.txt").write_text(f"data.source is {params.data.source}: no shapes are generated.\n")
        return target
    settings = params.data.synthetic
    return synthetic.generate(target, settings.n_images, settings.image_size, settings.seed)
