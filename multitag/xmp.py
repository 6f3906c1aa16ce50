"""XMP sidecars for photo managers (Lightroom, darktable, digiKam read them): the model's labels
as keywords, next to the photo (`photo.xmp`), never inside it.

Two properties carry them: `dc:subject` (flat keywords) and `lr:hierarchicalSubject` under a root
(`multitag|cat`), which also marks which keywords are the model's. Writing merges with a sidecar
that exists: every other property, and every keyword a person added, stays; only the keywords
the previous run wrote (its `root|...` entries) are replaced. The file is replaced in one rename.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

NAMESPACES = {
    "x": "adobe:ns:meta/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "dc": "http://purl.org/dc/elements/1.1/",
    "lr": "http://ns.adobe.com/lightroom/1.0/",
}
for _prefix, _uri in NAMESPACES.items():
    ET.register_namespace(_prefix, _uri)


def _tag(qualified: str) -> str:
    prefix, name = qualified.split(":")
    return f"{{{NAMESPACES[prefix]}}}{name}"


def sidecar_path(photo: Path) -> Path:
    """Where a photo's sidecar lives: beside it, its name with `.xmp` for the suffix (Adobe's convention)."""
    return photo.with_suffix(".xmp")


def write_keywords(photo: Path, labels: Sequence[str], root: str = "multitag") -> bool:
    """Put `labels` in the photo's sidecar, merged with what is there; whether the file changed."""
    path = sidecar_path(photo)
    tree = ET.parse(path) if path.exists() else ET.ElementTree(_skeleton())
    description = _description(tree.getroot())
    ours = [item.text or "" for item in _bag(description, "lr:hierarchicalSubject") if (item.text or "").startswith(f"{root}|")]
    previous = {entry.split("|", 1)[1] for entry in ours}
    subjects = [s for s in _items(description, "dc:subject") if s not in previous]
    hierarchical = [h for h in _items(description, "lr:hierarchicalSubject") if not h.startswith(f"{root}|")]
    _set_bag(description, "dc:subject", [*subjects, *(label for label in labels if label not in subjects)])
    _set_bag(description, "lr:hierarchicalSubject", [*hierarchical, *(f"{root}|{label}" for label in labels)])
    text = ET.tostring(tree.getroot(), encoding="unicode")
    if path.exists() and ET.tostring(ET.parse(path).getroot(), encoding="unicode") == text:
        return False
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(text + "\n", encoding="utf-8")
    os.replace(temp, path)
    return True


def _skeleton() -> ET.Element:
    meta = ET.Element(_tag("x:xmpmeta"))
    rdf = ET.SubElement(meta, _tag("rdf:RDF"))
    ET.SubElement(rdf, _tag("rdf:Description"), {_tag("rdf:about"): ""})
    return meta


def _description(root: ET.Element) -> ET.Element:
    """The first rdf:Description (one is made when the sidecar has none)."""
    found = root.find(f".//{_tag('rdf:Description')}")
    if found is not None:
        return found
    rdf = root if root.tag == _tag("rdf:RDF") else root.find(f".//{_tag('rdf:RDF')}")
    if rdf is None:
        rdf = ET.SubElement(root, _tag("rdf:RDF"))
    return ET.SubElement(rdf, _tag("rdf:Description"), {_tag("rdf:about"): ""})


def _bag(description: ET.Element, prop: str) -> list[ET.Element]:
    return description.findall(f"{_tag(prop)}/{_tag('rdf:Bag')}/{_tag('rdf:li')}")


def _items(description: ET.Element, prop: str) -> list[str]:
    return [item.text or "" for item in _bag(description, prop)]


def _set_bag(description: ET.Element, prop: str, values: Sequence[str]) -> None:
    for old in description.findall(_tag(prop)):
        description.remove(old)
    if values:
        bag = ET.SubElement(ET.SubElement(description, _tag(prop)), _tag("rdf:Bag"))
        for value in values:
            ET.SubElement(bag, _tag("rdf:li")).text = value
