"""The built-in dataset: labelled coloured shapes, drawn procedurally from a seed.

DiT is a class-conditional model (docs/paper.md §1.4, §3.1) trained on ImageNet (section 4.1). That is far
too big for a laptop, so minidit draws its own small labelled RGB images: 5 shapes x 2 colour
families = 10 classes, with enough nuisance variation that a model must learn the classes rather
than memorise pictures. No download and no extra package: the same seed gives the same bytes.
Use it through `minidit.training.data.make_shapes` or `minidit.training.data.load_dataset("shapes")`.
"""
import numpy as np

SHAPES = ("circle", "square", "triangle", "cross", "ring")
FAMILIES = ("warm", "cool")
# Class id = 2 * shape + family, so class 0 is "warm circle" and class 9 is "cool ring".
CLASS_NAMES = [f"{family} {shape}" for shape in SHAPES for family in FAMILIES]

# Hue intervals in degrees. Warm runs crimson-red-orange-gold, cool runs cyan-azure-blue; greens
# and purples belong to neither, so a colour never sits on the boundary between two classes.
HUE_DEG = {"warm": (-10.0, 55.0), "cool": (175.0, 235.0)}
SAT, VAL = (0.6, 1.0), (0.75, 1.0)          # vivid, bright foreground colours
BG_SAT, BG_VAL = (0.0, 0.3), (0.15, 0.6)    # dull, darker background colours
RADIUS = (0.20, 0.36)   # outer radius as a fraction of the side: the shape spans ~40-70% of it
EXTENT = 1.1            # largest distance of any shape's pixel from its centre, in radii
NOISE_STD = (0.0, 0.04)  # per-image Gaussian pixel noise, in [0, 1] intensity units
_NUM_PARAMS = 16         # uniform numbers drawn per image (see _scene_parameters)
_CHUNK = 256             # images rendered at once: bounds memory at ~20 MB per array


def _lerp(u, lo_hi):
    lo, hi = lo_hi
    return lo + (hi - lo) * u


def hsv_to_rgb(h, s, v):
    """HSV to RGB for arrays of equal shape; h in turns ([0, 1) is one turn), s and v in [0, 1].

    Returns (..., 3). Uses the closed form f(n) = v - v*s*clip(min(k, 4 - k), 0, 1) with
    k = (n + 6h) mod 6 and n = 5, 3, 1 for R, G, B.
    """
    n = np.array([5.0, 3.0, 1.0])
    k = (n + 6.0 * np.asarray(h)[..., None]) % 6.0
    return v[..., None] - (v * s)[..., None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def _inside(shape, u, v):
    """Boolean mask of sample points inside a shape, in its own frame scaled to unit radius.

    u, v: (b, Hs, Ws) coordinates after translation, rotation and scaling.
    """
    if shape == "circle":
        return u * u + v * v <= 0.85 ** 2
    if shape == "ring":
        r2 = u * u + v * v
        return (r2 <= 0.95 ** 2) & (r2 >= 0.5 ** 2)
    if shape == "square":
        return (np.abs(u) <= 0.68) & (np.abs(v) <= 0.68)
    if shape == "triangle":
        # Equilateral, circumradius 1.1: inside the three half-planes at distance 0.55 from the
        # centre, whose outward normals point at -90, 30 and 150 degrees.
        mask = None
        for phi in np.deg2rad([-90.0, 30.0, 150.0]):
            half = u * np.float32(np.cos(phi)) + v * np.float32(np.sin(phi)) <= 0.55
            mask = half if mask is None else mask & half
        return mask
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))
    raise ValueError(f"unknown shape {shape!r}")


def _box_sum(mask, ss):
    """Count the hits in each ss x ss block of a (b, S*ss, S*ss) mask; returns (b, S, S) uint8.

    Adding strided slices is ~15x faster in NumPy than sum(axis=(2, 4)) on the 5-D view.
    """
    b, S = mask.shape[0], mask.shape[1] // ss
    hits = mask.view(np.uint8).reshape(b, S, ss, S, ss)
    rows = hits[:, :, 0].copy()
    for k in range(1, ss):
        rows += hits[:, :, k]          # (b, S, S, ss): summed over the rows of each block
    out = rows[..., 0].copy()
    for k in range(1, ss):
        out += rows[..., k]            # (b, S, S): and over its columns
    return out


def _scene_parameters(n, rng):
    """Labels and the uniform numbers that fix each scene; row i depends only on the seed and i.

    Draws whole blocks of 10 rows (one row per image, filled row by row), so the first images of
    a set do not depend on n, and within every block of 10 each class appears exactly once.
    """
    k = len(CLASS_NAMES)
    n_rows = -(-n // k) * k
    u = rng.random((n_rows, _NUM_PARAMS))
    # argsort of i.i.d. uniforms is a uniformly random permutation of the 10 classes per block
    labels = np.argsort(u[:, 0].reshape(-1, k), axis=1).reshape(-1)
    return labels[:n].astype(np.int64), u[:n]


def _render(labels, u, image_size, ss, noise):
    """Draw one chunk of scenes; returns (b, S, S, 3) uint8.

    labels: (b,) class ids; u: (b, 16) uniforms in [0, 1); noise: (b, 3, S, S) standard normal.
    """
    S = image_size
    f32 = lambda a: a.astype(np.float32)[..., None, None]  # noqa: E731  (b, ...) -> (b, ..., 1, 1)
    shape_id, family = labels // 2, labels % 2
    radius = _lerp(u[:, 1], RADIUS)
    margin = EXTENT * radius
    cx = margin + (1 - 2 * margin) * u[:, 2]     # centre in [0, 1] units, shape fully inside
    cy = margin + (1 - 2 * margin) * u[:, 3]
    theta = 2 * np.pi * u[:, 4]                  # rotation (invisible for circle and ring)

    # Foreground colour: hue inside its family's interval, jittered saturation and brightness.
    lo = np.where(family == 0, HUE_DEG["warm"][0], HUE_DEG["cool"][0])
    hi = np.where(family == 0, HUE_DEG["warm"][1], HUE_DEG["cool"][1])
    hue = (lo + (hi - lo) * u[:, 5]) / 360.0 % 1.0
    fg = hsv_to_rgb(hue, _lerp(u[:, 6], SAT), _lerp(u[:, 7], VAL))
    # Background: a linear gradient between two dull colours along a random direction.
    c0 = hsv_to_rgb(u[:, 8], _lerp(u[:, 9], BG_SAT), _lerp(u[:, 10], BG_VAL))
    c1 = hsv_to_rgb(u[:, 11], _lerp(u[:, 12], BG_SAT), _lerp(u[:, 13], BG_VAL))
    phi = 2 * np.pi * u[:, 14]
    px = (np.arange(S, dtype=np.float32) + 0.5) / S - 0.5          # pixel centres, (S,)
    t = 0.5 + f32(np.cos(phi)) * px[None, None, :] + f32(np.sin(phi)) * px[None, :, None]
    t = np.clip(t, 0.0, 1.0)[:, None]                              # (b, 1, S, S)
    # Colours are composed channels-first, (b, 3, S, S): broadcasting is much faster in NumPy
    # when the innermost axis is a long one.
    bg = f32(c0) + t * f32(c1 - c0)                                # (b, 3, S, S)

    # Anti-aliasing by supersampling: test ss x ss points per pixel and average the hits.
    # The shape frame is affine in (x, y): u = a x + b y + c, v = -b x + a y + d, so each
    # coordinate costs one full-size add of a row term and a column term.
    xs = ((np.arange(S * ss) + 0.5) / (S * ss)).astype(np.float32)
    cos, sin = np.cos(theta) / radius, np.sin(theta) / radius
    c = -(cos * cx + sin * cy)
    d = sin * cx - cos * cy
    uu = f32(cos) * xs[None, None, :] + (f32(sin) * xs[None, :, None] + f32(c))
    vv = f32(-sin) * xs[None, None, :] + (f32(cos) * xs[None, :, None] + f32(d))
    inside = np.zeros(uu.shape, dtype=bool)
    for s, name in enumerate(SHAPES):
        sel = np.flatnonzero(shape_id == s)
        if len(sel):
            inside[sel] = _inside(name, uu[sel], vv[sel])
    cover = _box_sum(inside, ss).astype(np.float32) / ss ** 2   # (b, S, S), in [0, 1]

    img = bg + cover[:, None] * (f32(fg) - bg)                     # (b, 3, S, S)
    img += f32(_lerp(u[:, 15], NOISE_STD)[:, None]) * noise
    img = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    return img.transpose(0, 2, 3, 1)                               # (b, S, S, 3)


def render_shapes(n, image_size=32, seed=0):
    """Draw n labelled shape images; returns (images (n, S, S, 3) uint8, labels (n,) int64).

    Deterministic in (n, image_size, seed), and the i-th scene (shape, colour, position, size,
    rotation, background) depends only on seed and i: a larger n or another image_size draws
    the same scenes, only more of them or at another resolution.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8 to show a shape, got {image_size}")
    # Two independent streams from one seed: scene parameters and pixel noise.
    scene_seq, noise_seq = np.random.SeedSequence(seed).spawn(2)
    labels, u = _scene_parameters(n, np.random.default_rng(scene_seq))
    noise_rng = np.random.default_rng(noise_seq)
    ss = 4 if image_size <= 32 else 2   # 16 or 4 samples per pixel keep edges smooth and cost flat
    images = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        noise = noise_rng.standard_normal((stop - start, 3, image_size, image_size),
                                         dtype=np.float32)
        images[start:stop] = _render(labels[start:stop], u[start:stop], image_size, ss, noise)
    return images, labels
