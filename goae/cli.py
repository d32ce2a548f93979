"""The `goae` command: convert checkpoints, invert your own photos, render novel views, edit.

    goae invert photo.jpg more_photos/ --out out/ --views 5 --video --mesh
    goae edit photo.jpg --direction age.npy --alpha -2 0 2 --out out/
    goae convert-eg3d ffhqrebalanced512-128.pkl models/assets/ffhqrebalanced512-128
    goae convert-goae --encoder encoder_FFHQ.pt --afa afa_FFHQ.pt models/assets/goae_ffhq
    goae sample --out out/          (render the embedded generator; no weights needed)

Models default to what the DVC pipeline trained (models/generator, models/stage1, models/stage2). Without
them the embedded tiny generator and an untrained encoder are used, and every output says so.
Exit status: 0 all inputs ok, 1 some inputs failed, 2 no input succeeded or bad usage.
"""
from __future__ import annotations

import argparse
import pickle
import sys

from goae.app import cmd_convert_eg3d, cmd_convert_goae, cmd_edit, cmd_invert, cmd_pose, cmd_sample, cmd_sync


INVERT_HELP = """Invert photos into GOAE's latent spaces and render them in 3D.

Each photo is read (EXIF rotation, CMYK, 16-bit, alpha and grayscale are converted), its largest face is
found (MTCNN, offline) and cropped the EG3D way, and its camera is fitted to 68-point landmarks (--detector)
and the face's FaceMesh depth. Per photo OUT/<name>/ gets:
crop.png, camera.json (EG3D 25-value label + pose provenance), latents.safetensors (w_plus [14,512], feat_star F*),
reconstruction.png, depth.png; view_NN.png with --views, orbit.mp4/.gif with --video, mesh.ply with --mesh.
OUT/report.json lists every input (ok, or the reason it was skipped) and which weights were used.

Weights: --goae (converted official GOAE), else the pipeline's models/ (generator, stage1, stage2); missing
pieces fall back to the embedded tiny generator / an untrained encoder, and the report says so.
Exit status: 0 all inputs ok, 1 some inputs failed, 2 none succeeded."""

EDIT_HELP = """Edit a photo along a latent direction (Eq. 9: w+ += alpha*d, F* += F(w+ edited) - F(w+)).

Writes OUT/alpha<+a>_view<NN>.png for every alpha and view (yaw -30..+30 deg) and OUT/report.json."""


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="goae", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def models_args(s):
        s.add_argument("--models", default="models", help="pipeline outputs folder (generator, stage1, stage2)")
        s.add_argument("--goae", default=None, help="converted official GOAE weights prefix (goae convert-goae)")
        s.add_argument("--params", default="params.yaml", help="params file for model sizes and mix settings")
        s.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
        s.add_argument("--seed", type=int, default=0, help="seed of the renderer's random samples")

    def detector_args(s):
        from goae.data.landmarks import DETECTORS
        s.add_argument("--detector", default="auto", choices=list(DETECTORS),
                       help="68-point landmarks for the camera (auto: FAN if its weights exist, else dlib, else FaceMesh)")
        s.add_argument("--fan-weights", default=None, help="face-alignment 2DFAN-4 weights file")

    s = sub.add_parser("invert", help="invert photos: crop, camera, w+/F*, reconstruction, depth, views, video, mesh",
                       formatter_class=argparse.RawDescriptionHelpFormatter, description=INVERT_HELP)
    s.add_argument("inputs", nargs="+", help="photos or folders of photos")
    s.add_argument("--out", required=True, help="output folder (one subfolder per photo + report.json)")
    s.add_argument("--views", type=int, default=0, help="number of novel views (yaw −30°…+30°)")
    s.add_argument("--video", action="store_true", help="write an orbit video (MP4, GIF without ffmpeg)")
    s.add_argument("--video-frames", type=int, default=48, help="frames of the orbit video (24 fps)")
    s.add_argument("--mesh", action="store_true", help="write a PLY mesh of the (mixed) tri-plane density")
    s.add_argument("--mesh-res", type=int, default=96, help="marching-cubes grid size per axis")
    s.add_argument("--no-mix", action="store_true", help="render the AFA tri-plane without the occlusion-aware mix")
    detector_args(s)
    s.add_argument("--min-face", type=int, default=32, help="smallest face box side (px) to accept")
    models_args(s)
    s.set_defaults(fn=cmd_invert)

    s = sub.add_parser("edit", help="edit a photo along a latent direction (Eq. 9), multi-view",
                       formatter_class=argparse.RawDescriptionHelpFormatter, description=EDIT_HELP)
    s.add_argument("photo")
    s.add_argument("--direction", required=True, help=".npy direction (1×14×512), GOAE's files accepted")
    s.add_argument("--alpha", type=float, nargs="+", default=[-2.0, 0.0, 2.0])
    s.add_argument("--views", type=int, default=3)
    s.add_argument("--out", required=True)
    detector_args(s)
    models_args(s)
    s.set_defaults(fn=cmd_edit)

    s = sub.add_parser("pose", help="crop + EG3D camera only (no inversion) → dataset.json with provenance")
    s.add_argument("inputs", nargs="+", help="photos or folders of photos")
    s.add_argument("--out", required=True, help="dataset.json to write (crops and report.json go beside it)")
    s.add_argument("--size", type=int, default=512, help="crop size")
    s.add_argument("--pose-depth", default="facemesh", choices=["facemesh", "none"])
    s.add_argument("--device", default="cpu")
    detector_args(s)
    s.set_defaults(fn=cmd_pose)

    s = sub.add_parser("convert-eg3d", help="NVIDIA EG3D pickle → safetensors + JSON (no NVIDIA code is run)")
    s.add_argument("pkl")
    s.add_argument("out", help="output prefix: writes OUT.safetensors and OUT.json")
    s.set_defaults(fn=cmd_convert_eg3d)

    s = sub.add_parser("convert-goae", help="official GOAE encoder/AFA .pt → safetensors + JSON")
    s.add_argument("--encoder", required=True)
    s.add_argument("--afa", required=True)
    s.add_argument("out")
    s.set_defaults(fn=cmd_convert_goae)

    s = sub.add_parser("sample", help="render samples of the pipeline's (or the embedded) generator")
    s.add_argument("--out", required=True)
    s.add_argument("--n", type=int, default=2)
    s.add_argument("--psi", type=float, default=0.7)
    models_args(s)
    s.set_defaults(fn=cmd_sample)

    s = sub.add_parser("sync-exps", help="tag MLflow pipeline runs with their DVC experiment commits")
    s.add_argument("root", nargs="?", default=".")
    s.set_defaults(fn=cmd_sync)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (FileNotFoundError, ValueError, pickle.UnpicklingError) as e:  # bad file or usage: a message, not a trace
        print(f"goae {args.cmd}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
