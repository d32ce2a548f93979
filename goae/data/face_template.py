"""Generic 3D face landmark template in EG3D's world frame.

DATA: the 68-point mean face below is the classic iBUG-68 3D template shipped as
`head_pose/models/model_3D_68.txt` in the MIT-licensed `head-pose==0.0.4` wheel
(https://github.com/DewMaple/head_pose, (c) dew.maple, MIT licence). The 204 numbers are vendored
as data (68 rows of x, y, z) so that nothing is needed at runtime. Native frame: x to the image
right, y down, z away from the camera (nose tip z < 0), units ~ millimetres (eye distance 65).

Placement in EG3D's world (y up, frontal camera on +z looking to -z), derived from facts only:
1. Deep3DFaceRecon frame ("BFM units", 1 unit ~ 10 cm; x right, y up, z toward the camera):
   X_bfm = MM_TO_BFM * (x, -y, -z) + BFM_OFFSET. Scale and offset are the least-squares
   (scale + translation, no rotation) fit of our 5 points to Deep3DFaceRecon's standard 5 points
   (lm3d_std, whose 15 values are widely published); tests/test_data_crop.py re-derives them.
   Residual <= 0.034 BFM units (~3 mm); allowing a rotation would only turn it by 1.3 deg. This
   fixes both the crop scale (align_img's POS scale) and the crop centre (the BFM origin projects
   to the centre). The template is first made mirror-symmetric (template68_mm_symmetric).
2. World: X_world = HEAD_CENTER + BFM_TO_WORLD * X_bfm.
   - HEAD_CENTER: `3dface2idr_mat.py` puts the camera at 2.7*R*z + (0, 0.006, 0.161) looking
     along -R*z, i.e. it orbits the BFM origin placed at world (0, 0.006, 0.161).
   - BFM_TO_WORLD: `fix_pose_orig` then moves the camera to radius 2.7, i.e. 2.7 - 0.161 from
     the head, while the crop keeps rescale 300 px/unit at 1024 (x 512/700 at 512). For the face to
     render at crop scale through f = 4.2647 at that distance:
     k = 300 / (700 * 4.2647) * (2.7 - 0.161) = 0.2552 world units per BFM unit.
   Result: the face spans x ~ [-0.18, 0.18], the nose tip sits at z ~ 0.30, the eyes at y ~ 0.074.
"""
import numpy as np

TEMPLATE68_MM = np.array([
    (-73.393523, -29.801432, 47.667532), (-72.775014, -10.949766, 45.909403),
    (-70.533638, 7.929818, 44.842580), (-66.850058, 26.074280, 43.141114),
    (-59.790187, 42.564390, 38.635298), (-48.368973, 56.481080, 30.750622),
    (-34.121101, 67.246992, 18.456453), (-17.875411, 75.056892, 3.609035),
    (0.098749, 77.061286, -0.881698), (17.477031, 74.758448, 5.181201),
    (32.648966, 66.929021, 19.176563), (46.372358, 56.311389, 30.770570),
    (57.343480, 42.419126, 37.628629), (64.388482, 25.455880, 40.886309),
    (68.212038, 6.990805, 42.281449), (70.486405, -11.666193, 44.142567),
    (71.375822, -30.365191, 47.140426), (-61.119406, -49.361602, 14.254422),
    (-51.287588, -58.769795, 7.268147), (-37.804800, -61.996155, 0.442051),
    (-24.022754, -61.033399, -6.606501), (-11.635713, -56.686759, -11.967398),
    (12.056636, -57.391033, -12.051204), (25.106256, -61.902186, -7.315098),
    (38.338588, -62.777713, -1.022953), (51.191007, -59.302347, 5.349435),
    (60.053851, -50.190255, 11.615746), (0.653940, -42.193790, -13.380835),
    (0.804809, -30.993721, -21.150853), (0.992204, -19.944596, -29.284036),
    (1.226783, -8.414541, -36.948060), (-14.772472, 2.598255, -20.132003),
    (-7.180239, 4.751589, -23.536684), (0.555920, 6.562900, -25.944448),
    (8.272499, 4.661005, -23.695741), (15.214351, 2.643046, -20.858157),
    (-46.047290, -37.471411, 7.037989), (-37.674688, -42.730510, 3.021217),
    (-27.883856, -42.711517, 1.353629), (-19.648268, -36.754742, -0.111088),
    (-28.272965, -35.134493, -0.147273), (-38.082418, -34.919043, 1.476612),
    (19.265868, -37.032306, -0.665746), (27.894191, -43.342445, 0.247660),
    (37.437529, -43.110822, 1.696435), (45.170805, -38.086515, 4.894163),
    (38.196454, -35.532024, 0.282961), (28.764989, -35.484289, -1.172675),
    (-28.916267, 28.612716, -2.240310), (-17.533194, 22.172187, -15.934335),
    (-6.684590, 19.029051, -22.611355), (0.381001, 20.721118, -23.748437),
    (8.375443, 19.035460, -22.721995), (18.876618, 22.394109, -15.610679),
    (28.794412, 28.079924, -3.217393), (19.057574, 36.298248, -14.987997),
    (8.956375, 39.634575, -22.554245), (0.381549, 40.395647, -23.591626),
    (-7.428895, 39.836405, -22.406106), (-18.160634, 36.677899, -15.121907),
    (-24.377490, 28.677771, -4.785684), (-6.897633, 25.475976, -20.893742),
    (0.340663, 26.014269, -22.220479), (8.444722, 25.326198, -21.025520),
    (24.474473, 28.323008, -5.712776), (8.449166, 30.596216, -20.671489),
    (0.205322, 31.408738, -21.903670), (-7.198266, 30.844876, -20.328022),

], dtype=np.float64)

# 5 points in MTCNN/EG3D order: left eye, right eye (image left/right), nose tip, mouth left,
# mouth right. Eyes are the mean of the two eye corners, as Deep3DFaceRecon's `extract_5p`.
EYE_CORNERS = ((36, 39), (42, 45))
NOSE_TIP, MOUTH_LEFT, MOUTH_RIGHT = 30, 48, 54

# Mirror permutations (image left <-> right) for 5- and 68-point sets.
FLIP5 = np.array([1, 0, 2, 4, 3])
FLIP68 = np.array([*range(16, -1, -1), *range(26, 16, -1), 27, 28, 29, 30, *range(35, 30, -1),
                   45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40, *range(54, 47, -1),
                   *range(59, 54, -1), *range(64, 59, -1), 67, 66, 65])

MM_TO_BFM = 0.009783343650080639
# x offset pinned to 0 so the face stays mirror-symmetric about world x = 0 (the fit gives -0.0004).
BFM_OFFSET = np.array([0.0, -0.09738901, 0.18082605])
HEAD_CENTER = np.array([0.0, 0.006, 0.161])
BFM_TO_WORLD = 300.0 / (700.0 * 4.2647) * (2.7 - 0.161)


def five_from_68(points: np.ndarray) -> np.ndarray:
    """[..., 68, D] -> [..., 5, D] in EG3D's 5-point order."""
    p = np.asarray(points, dtype=np.float64)
    return np.stack([p[..., list(EYE_CORNERS[0]), :].mean(-2), p[..., list(EYE_CORNERS[1]), :].mean(-2),
                     p[..., NOSE_TIP, :], p[..., MOUTH_LEFT, :], p[..., MOUTH_RIGHT, :]], axis=-2)


def template68_mm_symmetric() -> np.ndarray:
    """[68, 3] the template averaged with its mirror image about x = 0.

    Why: a generic face should be left/right symmetric; then the pose of mirrored landmarks is
    exactly the flip_yaw of the original pose (the raw template is off by up to 2.6 mm, which
    turns a 20 deg yaw into -17.5 deg after mirroring).
    """
    return 0.5 * (TEMPLATE68_MM + TEMPLATE68_MM[FLIP68] * np.array([-1.0, 1.0, 1.0]))


def template68_bfm() -> np.ndarray:
    """[68, 3] in Deep3DFaceRecon's frame and units."""
    return MM_TO_BFM * template68_mm_symmetric() * np.array([1.0, -1.0, -1.0]) + BFM_OFFSET


def std5_bfm() -> np.ndarray:
    """[5, 3] standard 5 points for the align_img POS fit (stand-in for Deep3DFaceRecon's lm3d_std)."""
    return five_from_68(template68_bfm())


def template68_world() -> np.ndarray:
    """[68, 3] in EG3D's world frame."""
    return HEAD_CENTER + BFM_TO_WORLD * template68_bfm()


def template5_world() -> np.ndarray:
    """[5, 3] in EG3D's world frame, EG3D 5-point order."""
    return five_from_68(template68_world())
