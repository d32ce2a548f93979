"""MEAD novel-view protocol input: `meta.json` of a prepared MEAD split, built from a real MEAD folder.

Layout (one folder per identity, MEAD's own camera names; anything else in the path is kept as the frame key):
    <mead>/<identity>/<camera>/<...>/<frame>.<ext>      e.g. M003/front/angry/level_1/001.png
    <mead>/<identity>/<...>/<frame>_<camera>.<ext>      the camera name as a file-name token
MEAD's cameras `front`, `left_30`, `left_60`, `right_30`, `right_60` give the yaws 0, ±30, ±60 (`top`/`down`
are pitch views, not part of the protocol, and are ignored). Images of one identity that share the frame key
(the path without the camera name) are one protocol sample: "each person has five images with increasing yaw".

Yaw source (`prepare.mead_yaw`), recorded in meta.json as `yaw_source`:
  names   from the camera names. Sign (a convention; Table 1's ±60° group averages both signs, so only the
          per-source keys src_m60/src_p60 depend on it): `left_*` = +yaw, `right_*` = -yaw, where +yaw in EG3D's
          frame puts the camera at world +x, i.e. on the subject's left when the subject faces the front camera.
  camera  from the fitted camera label of each prepared image (goae.data.pose.yaw_pitch_roll), snapped to the
          nearest of 0, ±30, ±60 within 15°; images further from every nominal yaw are reported. Groups are
          then the identity folder (one sample per identity; a second image at the same yaw is reported).
  auto    names when every image's path carries a MEAD camera name, else camera.
Identities missing a protocol view are left out and listed under `incomplete` (never padded or guessed).
"""
from __future__ import annotations

import math
import re
from pathlib import PurePosixPath

MEAD_CAMERAS = {"front": 0.0, "left_30": 30.0, "left_60": 60.0, "right_30": -30.0, "right_60": -60.0}
PITCH_CAMERAS = ("top", "down")
SNAP_DEG = 15.0
_TOKEN = re.compile(r"(?:^|[_\-.])(front|left_30|left_60|right_30|right_60|top|down)(?=$|[_\-.])")
YAW_CONVENTION = ("left_* = +yaw, right_* = -yaw (EG3D: +yaw = camera at world +x, the subject's left); "
                  "Table 1's ±60° group averages both signs")


def camera_name(rel: str) -> tuple[str | None, str]:
    """(MEAD camera name or None, frame key without it) of a path relative to the MEAD root."""
    parts = list(PurePosixPath(rel).with_suffix("").parts)
    for i, part in enumerate(parts):
        if part in MEAD_CAMERAS or part in PITCH_CAMERAS:
            return part, "/".join(parts[:i] + parts[i + 1:])
    for i, part in enumerate(parts):
        m = _TOKEN.search(part)
        if m:
            rest = (part[:m.start()] + part[m.end():]).strip("_-.")
            return m.group(1), "/".join(parts[:i] + ([rest] if rest else []) + parts[i + 1:])
    return None, "/".join(parts)


def _yaw_from_label(label) -> float:
    from goae.data.pose import yaw_pitch_roll
    return math.degrees(yaw_pitch_roll(label)[0])


def build_mead_meta(outputs: dict[str, str], labels: dict[str, list[float]], mode: str = "auto") -> dict:
    """meta.json for a prepared MEAD split.

    outputs: source path relative to the MEAD root -> prepared image name (only images prepared ok);
    labels:  prepared image name -> its 25-value EG3D label (for `camera` mode).
    """
    if mode not in ("auto", "names", "camera"):
        raise ValueError(f"prepare.mead_yaw must be auto, names or camera, got {mode!r}")
    named = {src: camera_name(src) for src in outputs}
    if mode == "auto":
        mode = "names" if named and all(cam is not None for cam, _ in named.values()) else "camera"
    groups: dict[str, dict[float, str]] = {}
    ignored: dict[str, str] = {}
    for src, out in sorted(outputs.items()):
        if mode == "names":
            cam, key = named[src]
            if cam is None:
                ignored[src] = "no MEAD camera name in the path"
                continue
            if cam in PITCH_CAMERAS:
                ignored[src] = f"pitch camera {cam!r} (not a protocol view)"
                continue
            yaw = MEAD_CAMERAS[cam]
        else:
            parts = PurePosixPath(src).parts
            key = parts[0] if len(parts) > 1 else "."
            fitted = _yaw_from_label(labels[out])
            yaw = min(MEAD_CAMERAS.values(), key=lambda y: abs(y - fitted))
            if abs(yaw - fitted) > SNAP_DEG:
                ignored[src] = f"fitted yaw {fitted:.1f}° is more than {SNAP_DEG:g}° from 0/±30/±60"
                continue
        views = groups.setdefault(key, {})
        if yaw in views:
            ignored[src] = f"a second image at yaw {yaw:+g} for {key!r} (kept {views[yaw]})"
            continue
        views[yaw] = out
    yaws = sorted({y for v in groups.values() for y in v})
    complete = {k: [v[y] for y in yaws] for k, v in groups.items() if set(v) == set(yaws)}
    incomplete = {k: sorted(set(yaws) - set(v)) for k, v in groups.items() if set(v) != set(yaws)}
    if not complete:
        raise ValueError(f"MEAD: no identity has every view {yaws}; incomplete: {incomplete}; ignored: {ignored}")
    return {"split": "mead", "yaws_deg": yaws, "identities": dict(sorted(complete.items())),
            "yaw_source": mode, "yaw_convention": YAW_CONVENTION if mode == "names" else
            f"fitted camera yaw snapped to 0/±30/±60 within {SNAP_DEG:g}° (+yaw = camera at world +x)",
            "incomplete": incomplete, "ignored": ignored}
