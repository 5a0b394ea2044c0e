"""Reader of DeepfakeBench's index files (``preprocessing/dataset_json/<Name>.json``).

Layout: ``{dataset: {label_key: {split: {[c23|c40|raw]: {video: {"label", "frames", "masks"?}}}}}}``; the compression
level exists only for the FaceForensics++ family. Frame paths are those of the machine that wrote the file (absolute,
or relative to DeepfakeBench's ``datasets/rgb``, with Windows separators on some releases): a card's ``prefix_map``
rewrites old prefixes, and relative paths hang from the card's root. The label key of a fake is its forgery method;
a video's id is ``<label_key>/<video>``, from the index, never from folder names. Frame lists are sorted by frame
number (DeepfakeBench lists them in directory order) before the evenly spaced sample is taken.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from bench.data.frames import REAL, Frame, sample_evenly
from bench.errors import ConfigError, DataError

COMPRESSIONS = ("c23", "c40", "raw")

# DeepfakeBench's ``label_dict`` (training/config/test_config.yaml): label key -> 0 real, 1 fake.
LABEL_DICT: dict[str, int] = {
    "DFD_fake": 1,
    "DFD_real": 0,
    "FF-SH": 1,
    "FF-F2F": 1,
    "FF-DF": 1,
    "FF-FS": 1,
    "FF-NT": 1,
    "FF-FH": 1,
    "FF-real": 0,
    "CelebDFv1_real": 0,
    "CelebDFv1_fake": 1,
    "CelebDFv2_real": 0,
    "CelebDFv2_fake": 1,
    "DFDCP_Real": 0,
    "DFDCP_FakeA": 1,
    "DFDCP_FakeB": 1,
    "DFDC_Fake": 1,
    "DFDC_Real": 0,
    "DF_fake": 1,
    "DF_real": 0,
    "UADFV_Fake": 1,
    "UADFV_Real": 0,
    "roop_Real": 0,
    "roop_Fake": 1,
}

_DIGITS = re.compile(r"(\d+)")


def resolve_labels(labels: Mapping[str, int] | list[str], where: str) -> dict[str, int]:
    """Label keys with their labels: a mapping as given, or a list looked up in DeepfakeBench's ``label_dict``."""
    if isinstance(labels, Mapping):
        resolved = dict(labels)
    else:
        unknown = [k for k in labels if k not in LABEL_DICT]
        if unknown:
            raise ConfigError(
                f"{where}: label keys {', '.join(unknown)} are not in DeepfakeBench's label_dict; "
                "give 'labels' as a mapping {key: 0|1}"
            )
        resolved = {k: LABEL_DICT[k] for k in labels}
    bad = {k: v for k, v in resolved.items() if v not in (0, 1)}
    if bad:
        raise ConfigError(f"{where}: labels must be 0 (real) or 1 (fake), got {bad}")
    return resolved


@lru_cache(maxsize=4)
def _read_json(path: str, mtime: float) -> dict[str, Any]:
    try:
        with open(path) as fh:
            data = json.load(fh)
    except json.JSONDecodeError as err:
        raise DataError(f"index {path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise DataError(f"index {path}: expected a mapping at the top level")
    return data


def read_json(path: Path) -> dict[str, Any]:
    """The parsed index file (cached while the file is unchanged: the splits of a card share one read)."""
    if not path.is_file():
        raise DataError(f"index {path}: no such file (check data.root and the card's 'index')")
    return _read_json(str(path), path.stat().st_mtime)


def map_prefix(path: str, prefix_map: Mapping[str, str]) -> str:
    """``path`` with forward slashes and its longest matching old prefix replaced."""
    path = path.replace("\\", "/")
    for old in sorted(prefix_map, key=len, reverse=True):
        if path.startswith(old.replace("\\", "/")):
            return prefix_map[old] + path[len(old) :]
    return path


def _frame_order(path: str) -> list[int | str]:
    return [int(part) if part.isdigit() else part for part in _DIGITS.split(Path(path).name)]


def _videos(node: Any, compression: str | None, where: str) -> dict[str, Any]:
    """The ``{video: record}`` mapping under one label key's split, through the compression level if there is one."""
    if not isinstance(node, dict):
        raise DataError(f"{where}: expected a mapping of videos, got {type(node).__name__}")
    levels = [k for k in node if k in COMPRESSIONS]
    if levels:
        if compression is None:
            raise ConfigError(f"{where}: the index has compression levels {', '.join(levels)}; set 'compression'")
        if compression not in node:
            raise ConfigError(f"{where}: no compression level {compression!r}; it has {', '.join(levels)}")
        return node[compression]
    return node


def index_videos(
    index: dict[str, Any],
    *,
    dataset: str | None,
    split: str,
    labels: Mapping[str, int],
    compression: str | None,
    where: str,
) -> list[tuple[str, int, str, list[str]]]:
    """``(label_key, label, video_id, frame_paths)`` of every video one split of a parsed index lists, its frame
    paths as written (unmapped, unsorted; empty for a video whose frames were never extracted)."""
    if dataset is None:
        if len(index) != 1:
            raise ConfigError(f"{where}: the index holds {', '.join(index)}; set 'dataset' to one of them")
        dataset = next(iter(index))
    if dataset not in index:
        raise ConfigError(f"{where}: dataset {dataset!r} not in the index; it has {', '.join(index)}")
    groups = index[dataset]
    videos = []
    for key, label in labels.items():
        if key not in groups:
            raise ConfigError(f"{where}: label key {key!r} not in the index; it has {', '.join(groups)}")
        if split not in groups[key]:
            continue
        at = f"{where}: {dataset}/{key}/{split}"
        for video, record in _videos(groups[key][split], compression, at).items():
            if not isinstance(record, dict) or not isinstance(record.get("frames"), list):
                raise DataError(f"{at}: entry {video!r} is not a video record with a 'frames' list")
            videos.append((key, label, f"{key}/{video}", record["frames"]))
    return videos


def read_index(
    videos: list[tuple[str, int, str, list[str]]],
    *,
    prefix_map: Mapping[str, str],
    base: Path,
    frames_per_video: int,
    rgb: Path | None = None,
) -> list[Frame]:
    """The frames of the videos of :func:`index_videos`.

    Args:
        videos: what :func:`index_videos` lists; the key of a fake becomes its forgery method.
        prefix_map: old path prefix -> new prefix.
        base: folder that relative frame paths hang from.
        frames_per_video: evenly spaced frames taken per video.
        rgb: a DeepfakeBench checkout's ``datasets/rgb``: paths that another machine wrote under its own
            ``.../datasets/rgb/`` (and that ``prefix_map`` does not map) move under this one.
    """
    frames: list[Frame] = []
    for key, label, video, listed in videos:
        paths = sorted((relocate(p, prefix_map, rgb) for p in listed), key=_frame_order)
        forgery = REAL if label == 0 else key
        frames += [
            Frame(str(base / paths[i]), label, forgery, video) for i in sample_evenly(len(paths), frames_per_video)
        ]
    return frames


RGB = "/datasets/rgb/"


def relocate(path: str, prefix_map: Mapping[str, str], rgb: Path | None) -> str:
    """:func:`map_prefix`; then, with a checkout's ``rgb`` folder and no prefix of ``prefix_map`` matching, an
    absolute path under another machine's ``.../datasets/rgb/`` moves under ``rgb``, and a ``./`` path (relative to
    the checkout, as DeepfakeBench reads it) hangs from the checkout."""
    mapped = map_prefix(path, prefix_map)
    if rgb is None or mapped != path.replace("\\", "/"):
        return mapped
    if mapped.startswith("/") and RGB in mapped:
        return str(rgb / mapped.split(RGB, 1)[1])
    if mapped.startswith("./"):
        return str(rgb.parent.parent / mapped[2:])
    return mapped


def suspicious_prefixes(prefix_map: Mapping[str, str]) -> list[str]:
    """The entries of ``prefix_map`` that leave a separator at the start of the rest (``{"/old/rgb": ""}`` maps
    ``/old/rgb/a.png`` to ``/a.png``): one prefix ends with ``/`` and the other does not."""
    return [
        f"the prefix map {old!r} -> {new!r} looks wrong (one ends with '/', the other does not)"
        for old, new in prefix_map.items()
        if old.replace("\\", "/").endswith("/") != (new.endswith("/") or new == "")
    ]
