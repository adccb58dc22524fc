"""SynthCXR renderer: a synthetic frontal chest radiograph from a 14-label vector.

Everything the report says must be visible: each observation has one sign drawn where a
radiologist would look for it, faint when the label is uncertain. Geometry is in
normalised image coordinates (x right, y down, both 0..1); the patient's right is on the
image's left, as on a real PA film. numpy + PIL only, no per-pixel Python loops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# side names are the patient's: "right" is drawn on the image's left.
SIDE_SIGN = {"right": -1.0, "left": 1.0}
ZONES = ("upper", "middle", "lower")
# zone centres as a fraction of the way from apex to dome
ZONE_T = {"upper": 0.25, "middle": 0.5, "lower": 0.76}
DEVICES = (
    "endotracheal tube",
    "nasogastric tube",
    "central venous catheter",
    "pacemaker",
    "sternotomy wires",
)

UNCERTAIN_ALPHA = 0.45  # how strongly an uncertain sign is drawn relative to a positive one


@dataclass
class Patient:
    """Per-patient anatomy and acquisition: drawn independently of the findings."""

    cx: float
    top: float
    width: float
    height: float
    ctr: float  # normal cardiothoracic ratio of this patient
    rotation: float  # degrees
    gamma: float
    contrast: float
    offset: float
    noise: float
    seed: int

    @classmethod
    def draw(cls, rng: np.random.Generator) -> Patient:
        return cls(
            cx=0.5 + rng.uniform(-0.02, 0.02),
            top=rng.uniform(-0.02, 0.02),
            width=rng.uniform(0.9, 1.05),
            height=rng.uniform(0.94, 1.05),
            ctr=rng.uniform(0.40, 0.46),
            rotation=rng.uniform(-4, 4),
            gamma=rng.uniform(0.85, 1.2),
            contrast=rng.uniform(0.85, 1.1),
            offset=rng.uniform(-0.04, 0.04),
            noise=rng.uniform(0.008, 0.022),
            seed=int(rng.integers(2**31)),
        )


@dataclass
class Finding:
    """One drawn observation: its label value and attributes (side, severity, ...)."""

    name: str
    value: float  # 1.0 positive, -1.0 uncertain
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def alpha(self) -> float:
        return 1.0 if self.value == 1.0 else UNCERTAIN_ALPHA


def draw_attributes(name: str, rng: np.random.Generator) -> dict[str, Any]:
    """Side / severity / kind for an observation, where they apply."""
    side = str(rng.choice(["right", "left"]))
    sev = str(rng.choice(["small", "moderate", "large"], p=[0.45, 0.35, 0.2]))
    if name == "Cardiomegaly":
        return {"severity": str(rng.choice(["mild", "moderate", "severe"], p=[0.45, 0.35, 0.2]))}
    if name == "Pleural Effusion":
        sides = str(rng.choice(["right", "left", "bilateral"], p=[0.35, 0.3, 0.35]))
        return {"side": sides, "severity": sev}
    if name == "Pneumothorax":
        return {"side": side, "severity": sev}
    if name in ("Consolidation", "Pneumonia", "Lung Opacity"):
        return {
            "side": side,
            "zone": str(rng.choice(["upper", "middle", "lower"], p=[0.2, 0.3, 0.5])),
        }
    if name == "Lung Lesion":
        return {
            "side": side,
            "zone": str(rng.choice(ZONES)),
            "kind": str(rng.choice(["nodule", "mass"], p=[0.7, 0.3])),
        }
    if name == "Edema":
        return {"severity": str(rng.choice(["mild", "moderate", "severe"], p=[0.45, 0.35, 0.2]))}
    if name == "Atelectasis":
        return {"side": str(rng.choice(["right", "left", "bilateral"], p=[0.35, 0.3, 0.35]))}
    if name in ("Fracture", "Pleural Other"):
        return {"side": side}
    if name == "Support Devices":
        n = int(rng.choice([1, 2], p=[0.75, 0.25]))
        return {
            "devices": sorted(
                rng.choice(DEVICES, size=n, replace=False).tolist(), key=DEVICES.index
            )
        }
    return {}


# -- small vectorised helpers ------------------------------------------------------------


def blur(a: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur of a non-negative layer through PIL (8-bit, scaled to the layer's max)."""
    a = np.asarray(a, dtype=np.float32)
    top = float(a.max())
    if sigma_px < 0.3 or top <= 0.0:
        return a
    # 8-bit steps of top/255 are far below what the eye or the noise resolves
    img = Image.fromarray(np.clip(a * (255.0 / top) + 0.5, 0, 255).astype(np.uint8), "L")
    out = np.asarray(img.filter(ImageFilter.GaussianBlur(sigma_px)), dtype=np.float32)
    return out * (top / 255.0)


def smooth3(a: np.ndarray) -> np.ndarray:
    """A [1, 2, 1] / 4 separable smoothing in float, for the finished image (detector blur)."""
    p = np.pad(a, 1, mode="edge")
    a = (p[:-2] + 2 * p[1:-1] + p[2:]) * 0.25
    return (a[:, :-2] + 2 * a[:, 1:-1] + a[:, 2:]) * 0.25


def _soft(margin: np.ndarray, width: float) -> np.ndarray:
    """Antialiased inside-mask from a signed margin (positive inside), in normalised units."""
    return np.clip(margin / width + 0.5, 0.0, 1.0).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a small random grid upsampled bicubically."""
    small = Image.fromarray(rng.uniform(-1, 1, (cells, cells)).astype(np.float32), "F")
    return np.asarray(small.resize((size, size), Image.BICUBIC), dtype=np.float32)


class Canvas:
    """Float layers drawn with PIL in normalised coordinates."""

    def __init__(self, size: int) -> None:
        self.size = size

    def layer(self) -> tuple[Image.Image, ImageDraw.ImageDraw]:
        img = Image.new("F", (self.size, self.size), 0.0)
        return img, ImageDraw.Draw(img)

    def pts(self, xs: np.ndarray, ys: np.ndarray) -> list[tuple[float, float]]:
        return list(zip((xs * self.size).tolist(), (ys * self.size).tolist(), strict=True))

    def px(self, v: float) -> int:
        return max(1, int(round(v * self.size)))


# -- the renderer ------------------------------------------------------------------------


class Renderer:
    """Draws one radiograph: anatomy of `patient`, then the sign of each finding."""

    def __init__(self, size: int, patient: Patient, findings: list[Finding]) -> None:
        self.S = size
        self.p = patient
        self.f = {f.name: f for f in findings}
        self.rng = np.random.default_rng(patient.seed)
        self.cv = Canvas(size)
        g = (np.arange(size, dtype=np.float32) + 0.5) / size
        self.x, self.y = np.meshgrid(g, g)
        p = patient
        self.half = 0.36 * p.width  # inner thoracic half-width
        self.apex = 0.11 + p.top
        self.lung_hw = 0.165 * p.width
        self.dome = {
            "right": 0.66 * p.height + p.top + 0.02,
            "left": 0.69 * p.height + p.top + 0.02,
        }
        self.lc = {s: p.cx + SIDE_SIGN[s] * 0.195 * p.width for s in SIDE_SIGN}
        self.hilum = {
            s: (p.cx + SIDE_SIGN[s] * 0.085 * p.width, 0.41 * p.height + p.top) for s in SIDE_SIGN
        }

    # geometry -------------------------------------------------------------------------
    def lung_margin(self, side: str, apex_drop: float = 0.0, lateral_in: float = 0.0) -> np.ndarray:
        """Signed margin (normalised units, >0 inside) of one lung's outline."""
        s, x, y = SIDE_SIGN[side], self.x, self.y
        apex = self.apex + apex_drop
        t = np.clip((y - apex) / 0.24, 0.0, 1.0)
        hw = self.lung_hw * t**0.42 - lateral_in * (1.0 - np.clip((y - apex) / 0.45, 0, 1))
        u = np.clip(s * (x - self.lc[side]) / self.lung_hw, -1.0, 1.0)
        dome = self.dome[side] + 0.075 * u**2 + 0.02 * u
        return np.minimum.reduce([hw - np.abs(x - self.lc[side]), dome - y, y - apex])

    def zone_centre(self, side: str, zone: str) -> tuple[float, float]:
        t = ZONE_T[zone]
        y = self.apex + t * (self.dome[side] - self.apex)
        return self.lc[side] + SIDE_SIGN[side] * 0.02, y

    def heart_params(self) -> tuple[float, float, float, float]:
        ctr = self.p.ctr
        f = self.f.get("Cardiomegaly")
        if f is not None:
            target = {"mild": 0.56, "moderate": 0.61, "severe": 0.67}[
                f.attrs.get("severity", "moderate")
            ]
            ctr = ctr + f.alpha * (target - ctr) if f.value == 1.0 else max(ctr, 0.51)
        a = ctr * self.half
        cx = self.p.cx + a / 3.0  # a third right of the midline, two thirds left
        b = 0.13 + 0.35 * (a - 0.15)
        cy = self.dome["left"] - 0.55 * b
        return cx, cy, a, b

    # drawing --------------------------------------------------------------------------
    def render(self) -> np.ndarray:
        S, x, y, p, rng = self.S, self.x, self.y, self.p, self.rng
        tissue = 0.40
        body = _soft(
            1.0 - ((x - p.cx) / (0.5 * p.width)) ** 2 - ((y - 0.75) / (0.95 * p.height)) ** 2, 0.05
        )
        img = 0.05 + (tissue - 0.05) * body

        # heart and mediastinum: denser than the chest wall; they carve the lungs' medial edge
        hx, hy, ha, hb = self.heart_params()
        heart = _soft(1.0 - ((x - hx) / ha) ** 2 - ((y - hy) / hb) ** 2, 0.12)
        mw = 0.07 * p.width
        ecm = self.f.get("Enlarged Cardiomediastinum")
        if ecm is not None:
            mw += 0.055 * p.width * ecm.alpha
        med = _soft(mw - np.abs(x - p.cx + 0.008), 0.01) * _soft(hy - y + 0.02, 0.02)
        knob = _soft(
            1.0 - ((x - p.cx - mw + 0.012) / 0.035) ** 2 - ((y - self.apex - 0.16) / 0.04) ** 2, 0.3
        )
        med = np.maximum(med, knob)
        # the heart's lower border sinks into the diaphragm, as on a real film
        img += 0.10 * np.maximum(heart * _soft(self.dome["left"] + 0.01 - y, 0.03), med)

        lungs = {s: _soft(self.lung_margin(s), 0.008) for s in SIDE_SIGN}
        for s in lungs:
            lungs[s] *= (1.0 - heart) * (1.0 - med)
        lung = np.maximum(lungs["right"], lungs["left"])

        # lung markings: vessels radiating from the hila, fading to the periphery
        vessels = self._vessels()
        texture = 0.025 * _smooth_noise(rng, S, 12)
        air = 0.17 + 0.10 * vessels + texture
        ptx_mask, pleural_line = self._pneumothorax(lungs)
        air = air * (1.0 - ptx_mask) + ptx_mask * 0.09
        img = img * (1.0 - lung) + lung * air

        # stomach bubble under the left hemidiaphragm
        bx, by = self.lc["left"] + 0.03, self.dome["left"] + 0.07
        img -= 0.10 * _soft(1.0 - ((x - bx) / 0.06) ** 2 - ((y - by) / 0.03) ** 2, 0.3) * body
        # trachea and main bronchi (air in the mediastinum)
        img -= (
            0.09 * _soft(0.016 - np.abs(x - p.cx), 0.004) * _soft(0.37 * p.height + p.top - y, 0.01)
        )

        img += self._bones()
        img += pleural_line
        img = self._parenchyma(img, lungs, lung)
        img = self._effusion(img, lungs, tissue)
        img += self._pleural_thickening(lungs)
        img += self._devices()

        # acquisition: patient rotation, exposure, quantum noise
        im = Image.fromarray(img.astype(np.float32), "F").rotate(
            p.rotation, resample=Image.BILINEAR, fillcolor=0.05
        )
        img = np.asarray(im, dtype=np.float32)
        img = np.clip(img, 0.0, 1.0) ** p.gamma
        img = (img - 0.4) * p.contrast + 0.4 + p.offset
        img = smooth3(img) + rng.normal(0.0, p.noise, img.shape).astype(np.float32)
        return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)

    def _vessels(self) -> np.ndarray:
        S, rng, cv = self.S, self.rng, self.cv
        layer, d = cv.layer()
        edema = self.f.get("Edema")
        for side, (hx, hy) in self.hilum.items():
            s = SIDE_SIGN[side]
            for k in range(16):
                ang = math.radians(rng.uniform(-75, 80))  # 0 = lateral, negative = up
                length = rng.uniform(0.12, 0.27)
                n = 6
                t = np.linspace(0, 1, n)
                wob = np.cumsum(rng.normal(0, 0.012, n))
                xs = hx + s * (t * length * math.cos(ang)) + wob * math.sin(ang) * s
                ys = hy + t * length * math.sin(ang) + wob * math.cos(ang) * 0.5
                for i in range(n - 1):  # tapering width
                    w = max(1, int(round((2.6 - 1.8 * t[i]) * S / 256)))
                    d.line(cv.pts(xs[i : i + 2], ys[i : i + 2]), fill=1.0 - 0.5 * t[i], width=w)
                if k % 2 == 0:  # one side branch
                    j = int(rng.integers(2, 4))
                    b_ang = ang + rng.choice([-1, 1]) * rng.uniform(0.4, 0.8)
                    bl = length * rng.uniform(0.3, 0.5)
                    bx = [xs[j], xs[j] + s * bl * math.cos(b_ang)]
                    by = [ys[j], ys[j] + bl * math.sin(b_ang)]
                    d.line(cv.pts(np.array(bx), np.array(by)), fill=0.5, width=max(1, S // 256))
        v = np.asarray(layer, dtype=np.float32)
        v = blur(v, (1.1 if edema is None else 1.1 + 1.5 * edema.alpha) * S / 256)
        return np.clip(v, 0, 1.2)

    def _bones(self) -> np.ndarray:
        S, p, cv = self.S, self.p, self.cv
        out = np.zeros((S, S), np.float32)
        x, y = self.x, self.y
        # spine: vertebral bodies with darker disc spaces, seen through the mediastinum
        spine = _soft(0.035 * p.width - np.abs(x - p.cx), 0.006)
        discs = 0.5 + 0.5 * np.cos(2 * math.pi * (y - p.top) / 0.052)
        out += spine * (0.05 + 0.04 * (discs > 0.15))
        layer, d = cv.layer()
        flayer, fd = cv.layer()  # fracture callus, drawn stronger than the ribs
        frac = self.f.get("Fracture")
        frac_side = frac.attrs.get("side") if frac else None
        frac_rib = 4 + (p.seed % 3)
        rib_w = cv.px(0.017)
        for side, s in SIDE_SIGN.items():
            for i in range(10):
                y0 = self.apex + 0.01 + i * 0.058 * p.height
                t = np.linspace(0, 1, 24)
                xs = p.cx + s * (0.045 + 0.345 * t) * p.width
                ys = y0 - 0.04 * np.sin(math.pi * t * 0.9) + 0.11 * t**2
                if side == frac_side and i == frac_rib:
                    # a clear break: gap plus step-off of the lateral fragment
                    # a displaced break with callus: bright fusiform swelling, dark fracture
                    # line across it, lateral fragment stepped down by about a rib width
                    cut = 15
                    fx, fy = xs[cut], ys[cut]
                    cw, ch = 0.042, 0.018 * (0.6 + 0.4 * frac.alpha)
                    d.line(cv.pts(xs[: cut + 1], ys[: cut + 1]), fill=1.0, width=rib_w)
                    step = 1.0 * 0.017 * frac.alpha
                    d.line(cv.pts(xs[cut:], ys[cut:] + step), fill=1.0, width=rib_w)
                    fd.ellipse(
                        [
                            cv.pts(np.array([fx - cw]), np.array([fy - ch]))[0],
                            cv.pts(np.array([fx + cw]), np.array([fy + ch + 0.008]))[0],
                        ],
                        fill=1.0,
                    )
                    cut_line = cv.pts(
                        np.array([fx - 0.006, fx + 0.006]), np.array([fy - 0.03, fy + 0.035])
                    )
                    for dd in (d, fd):
                        dd.line(cut_line, fill=0.0, width=cv.px(0.008))
                else:
                    d.line(cv.pts(xs, ys), fill=1.0, width=rib_w)
            # clavicle
            t = np.linspace(0, 1, 12)
            xs = p.cx + s * (0.04 + 0.29 * t) * p.width
            ys = self.apex + 0.04 - 0.07 * t + 0.015 * np.sin(math.pi * t)
            d.line(cv.pts(xs, ys), fill=1.8, width=cv.px(0.026))
        ribs = blur(np.asarray(layer, dtype=np.float32), 0.8 * S / 256)
        out += 0.08 * ribs
        if frac is not None:
            out += 0.2 * frac.alpha * blur(np.asarray(flayer, dtype=np.float32), 0.8 * S / 256)
        return out

    def _pneumothorax(self, lungs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        S = self.S
        f = self.f.get("Pneumothorax")
        zero = np.zeros((S, S), np.float32)
        if f is None:
            return zero, zero
        side = f.attrs.get("side", "right")
        size = {"small": 0.05, "moderate": 0.09, "large": 0.15}[f.attrs.get("severity", "moderate")]
        if f.value != 1.0:
            size = 0.045
        collapsed = _soft(self.lung_margin(side, apex_drop=size, lateral_in=0.8 * size), 0.006)
        region = np.clip(lungs[side] - collapsed, 0, 1)
        # the visceral pleural line: a thin bright rim just inside the collapsed lung edge
        rim = _soft(self.lung_margin(side, apex_drop=size, lateral_in=0.8 * size), 0.006)
        inner = _soft(
            self.lung_margin(side, apex_drop=size + 0.007, lateral_in=0.8 * size + 0.007), 0.006
        )
        line = np.clip(rim - inner, 0, 1) * lungs[side]
        return region * f.alpha, 0.22 * f.alpha * line

    def _parenchyma(
        self, img: np.ndarray, lungs: dict[str, np.ndarray], lung: np.ndarray
    ) -> np.ndarray:
        S, x, y, rng = self.S, self.x, self.y, self.rng
        add = np.zeros((S, S), np.float32)
        edema = self.f.get("Edema")
        if edema is not None:
            amp = {"mild": 0.11, "moderate": 0.16, "severe": 0.22}[
                edema.attrs.get("severity", "moderate")
            ]
            for side, (hx, hy) in self.hilum.items():
                s = SIDE_SIGN[side]
                gx = hx + s * 0.06
                add += (
                    amp
                    * edema.alpha
                    * np.exp(-(((x - gx) / 0.1) ** 2) - ((y - hy - 0.03) / 0.13) ** 2)
                )
            lay, d = self.cv.layer()  # Kerley B lines at the lateral bases
            for side, s in SIDE_SIGN.items():
                edge = self.lc[side] + s * self.lung_hw
                for k in range(5):
                    yy = self.dome[side] - 0.03 - 0.025 * k
                    d.line(
                        self.cv.pts(np.array([edge - s * 0.05, edge]), np.array([yy, yy])),
                        fill=1.0,
                        width=max(1, S // 256),
                    )
            add += 0.12 * edema.alpha * blur(np.asarray(lay, np.float32), 0.5 * S / 256)

        for name in ("Lung Opacity", "Pneumonia", "Consolidation"):
            f = self.f.get(name)
            if f is None:
                continue
            side, zone = f.attrs.get("side", "right"), f.attrs.get("zone", "lower")
            zx, zy = self.zone_centre(side, zone)
            if name == "Lung Opacity":  # hazy ground glass: vessels stay visible through it
                add += (
                    0.2
                    * f.alpha
                    * np.exp(-(((x - zx) / 0.1) ** 2) - ((y - zy) / 0.09) ** 2)
                    * lungs[side]
                )
            elif name == "Pneumonia":  # patchy, fluffy airspace disease
                for _ in range(9):
                    bx, by = zx + rng.normal(0, 0.04), zy + rng.normal(0, 0.04)
                    r = rng.uniform(0.018, 0.032)
                    add += (
                        0.15
                        * f.alpha
                        * np.exp(-(((x - bx) / r) ** 2) - ((y - by) / r) ** 2)
                        * lungs[side]
                    )
            else:  # dense, sharply marginated, with air bronchograms
                zx += SIDE_SIGN[side] * 0.05
                wob = 1.0 + 0.18 * _smooth_noise(rng, S, 6)
                blob = _soft(1.0 - (((x - zx) / 0.12) ** 2 + ((y - zy) / 0.085) ** 2) / wob, 0.15)
                blob = blur(blob, 1.0 * S / 256) * lungs[side]
                lay, d = self.cv.layer()
                for _ in range(3):  # air bronchograms fan out from the medial side
                    ang = rng.uniform(-0.6, 0.6)
                    t = np.linspace(0.0, 0.13, 5)
                    x0 = zx - SIDE_SIGN[side] * 0.09
                    d.line(
                        self.cv.pts(
                            x0 + SIDE_SIGN[side] * t * math.cos(ang), zy + t * math.sin(ang)
                        ),
                        fill=1.0,
                        width=max(1, 2 * S // 256),
                    )
                bronch = blur(np.asarray(lay, np.float32), 0.6 * S / 256)
                img = img * (1 - f.alpha * blob) + f.alpha * blob * (0.43 - 0.13 * bronch)

        ate = self.f.get("Atelectasis")
        if ate is not None:
            sides = (
                ["right", "left"]
                if ate.attrs.get("side") == "bilateral"
                else [ate.attrs.get("side", "right")]
            )
            lay, d = self.cv.layer()
            for side in sides:
                s = SIDE_SIGN[side]
                cx0, cy0 = self.lc[side], self.dome[side] - 0.075
                xs = np.array([cx0 - 0.08, cx0 + 0.08])
                ys = np.array([cy0 + s * 0.015, cy0 - s * 0.015])
                d.line(self.cv.pts(xs, ys), fill=1.0, width=self.cv.px(0.015))
            add += 0.3 * ate.alpha * blur(np.asarray(lay, np.float32), 0.7 * S / 256) * lung

        les = self.f.get("Lung Lesion")
        if les is not None:
            side, zone = les.attrs.get("side", "right"), les.attrs.get("zone", "middle")
            zx, zy = self.zone_centre(side, zone)
            r = 0.022 if les.attrs.get("kind") == "nodule" else 0.055
            wob = 1.0 + (0.0 if r < 0.03 else 0.12 * _smooth_noise(rng, S, 8))
            disk = _soft(1.0 - (((x - zx) ** 2 + (y - zy) ** 2) / r**2) / wob, 0.25)
            add += 0.26 * les.alpha * disk * np.clip(lungs[side] + 0.3, 0, 1)
        return img + add

    def _effusion(self, img: np.ndarray, lungs: dict[str, np.ndarray], tissue: float) -> np.ndarray:
        f = self.f.get("Pleural Effusion")
        if f is None:
            return img
        sides = (
            ["right", "left"]
            if f.attrs.get("side") == "bilateral"
            else [f.attrs.get("side", "right")]
        )
        depth = {"small": 0.05, "moderate": 0.14, "large": 0.25}[
            f.attrs.get("severity", "moderate")
        ]
        if f.value != 1.0:
            depth = 0.06
        x, y = self.x, self.y
        for side in sides:
            s = SIDE_SIGN[side]
            u = np.clip(s * (x - self.lc[side]) / self.lung_hw, -1, 1)
            # meniscus: the fluid climbs the lateral chest wall
            level = self.dome[side] + 0.07 - depth - 0.09 * ((u + 1) / 2) ** 2
            fluid = _soft(y - level, 0.03) * _soft(self.lung_margin(side) + 0.03, 0.01)
            img = img * (1 - f.alpha * fluid) + f.alpha * fluid * (tissue + 0.04)
        return img

    def _pleural_thickening(self, lungs: dict[str, np.ndarray]) -> np.ndarray:
        f = self.f.get("Pleural Other")
        if f is None:
            return np.zeros_like(self.x)
        side = f.attrs.get("side", "right")
        s, x, y = SIDE_SIGN[side], self.x, self.y
        dist = self.lc[side] + s * self.lung_hw - x  # to the lateral wall, inside positive
        band = (
            _soft(0.035 - s * dist, 0.01)
            * _soft(y - (self.apex + 0.12), 0.02)
            * _soft(self.dome[side] - 0.02 - y, 0.02)
        )
        return 0.32 * f.alpha * band * lungs[side]

    def _devices(self) -> np.ndarray:
        f = self.f.get("Support Devices")
        S, p, cv = self.S, self.p, self.cv
        if f is None:
            return np.zeros((S, S), np.float32)
        lay, d = cv.layer()
        hx, hy, ha, hb = self.heart_params()
        carina = 0.37 * p.height + p.top
        for dev in f.attrs.get("devices", ["endotracheal tube"]):
            if dev == "endotracheal tube":
                for dx in (-0.008, 0.008):
                    d.line(
                        cv.pts(np.array([p.cx + dx, p.cx + dx]), np.array([0.0, carina - 0.06])),
                        fill=1.0,
                        width=cv.px(0.005),
                    )
            elif dev == "nasogastric tube":
                t = np.linspace(0, 1, 20)
                xs = p.cx - 0.01 + 0.15 * np.clip((t - 0.65) / 0.35, 0, 1) ** 1.5
                ys = 0.0 + t * (self.dome["left"] + 0.09)
                d.line(cv.pts(xs, ys), fill=1.0, width=cv.px(0.007))
            elif dev == "central venous catheter":
                t = np.linspace(0, 1, 16)
                xs = p.cx - 0.14 + 0.11 * np.sin(t * math.pi / 2)
                ys = 0.02 + t * (carina + 0.02)
                d.line(cv.pts(xs, ys), fill=1.0, width=cv.px(0.007))
            elif dev == "pacemaker":
                gx, gy = p.cx + 0.24 * p.width, self.apex + 0.09
                d.rounded_rectangle(
                    [
                        cv.pts(np.array([gx - 0.05]), np.array([gy - 0.032]))[0],
                        cv.pts(np.array([gx + 0.05]), np.array([gy + 0.032]))[0],
                    ],
                    radius=cv.px(0.015),
                    fill=2.2,
                )
                t = np.linspace(0, 1, 20)
                xs = gx - 0.04 + (hx - 0.02 - gx + 0.04) * t + 0.05 * np.sin(math.pi * t)
                ys = gy + (hy + 0.3 * hb - gy) * t
                d.line(cv.pts(xs, ys), fill=1.0, width=cv.px(0.006))
            elif dev == "sternotomy wires":
                for k in range(5):
                    wy = self.apex + 0.15 + k * 0.06
                    box = [
                        cv.pts(np.array([p.cx - 0.016]), np.array([wy - 0.011]))[0],
                        cv.pts(np.array([p.cx + 0.016]), np.array([wy + 0.011]))[0],
                    ]
                    d.ellipse(box, outline=1.6, width=cv.px(0.006))
        dev = np.asarray(lay, np.float32)
        return 0.42 * f.alpha * blur(dev, 0.5 * S / 256)


def render(size: int, patient: Patient, findings: list[Finding]) -> np.ndarray:
    """A uint8 (size, size) radiograph of `patient` with the signs of `findings`."""
    return Renderer(size, patient, findings).render()


# -- the report grammar ------------------------------------------------------------------
# Every sentence is written so that rrglib.labeler reads the intended value back: positive
# sentences carry no trigger words, uncertain ones one hedge, negative ones a plain "no".

ZONE_WORDS = {
    "upper": ["upper lung", "upper zone"],
    "middle": ["mid lung", "mid zone"],
    "lower": ["lung base", "lower zone"],
}
HEDGES = ["Possible", "Questionable", "Suspected"]

POSITIVE: dict[str, list[str]] = {
    "Enlarged Cardiomediastinum": [
        "The mediastinum is widened.",
        "Widened mediastinum.",
        "The mediastinal contour is widened.",
    ],
    "Cardiomegaly": [
        "The heart is {sev} enlarged.",
        "{Sev} cardiomegaly.",
        "The cardiac silhouette is {sev} enlarged.",
    ],
    "Lung Opacity": [
        "Hazy opacity in the {side} {zone}.",
        "There is a hazy opacity in the {side} {zone}.",
    ],
    "Lung Lesion": [
        "A {size}{kind} is present in the {side} {zone}.",
        "{Size}{kind} in the {side} {zone}.",
    ],
    "Edema": [
        "{Sev} pulmonary edema.",
        "There is {sev} pulmonary edema.",
        "{Sev} interstitial pulmonary edema.",
    ],
    "Consolidation": [
        "Dense consolidation in the {side} {zone}.",
        "There is consolidation in the {side} {zone}.",
        "Focal consolidation in the {side} {zone}.",
    ],
    "Pneumonia": [
        "Patchy {side} {zone} pneumonia.",
        "Findings of pneumonia in the {side} {zone}.",
        "There is pneumonia in the {side} {zone}.",
    ],
    "Atelectasis": [
        "Plate atelectasis at the {where}.",
        "Linear atelectasis at the {where}.",
        "There is plate atelectasis at the {where}.",
    ],
    "Pneumothorax": [
        "{Sev} {side} apical pneumothorax.",
        "There is a {sev} {side} pneumothorax.",
        "{Sev} {side} pneumothorax with a visible pleural line.",
    ],
    "Pleural Effusion": [
        "{Sev} {side} pleural {effusion}.",
        "There {is_a} {sev} {side} pleural {effusion}.",
    ],
    "Pleural Other": [
        "{Side} lateral pleural thickening.",
        "There is pleural thickening along the {side} chest wall.",
    ],
    "Fracture": [
        "Healing fracture of a {side} lateral rib.",
        "{Side} lateral rib fracture.",
        "There is a fracture of a {side} rib.",
    ],
}
DEVICE_WORDS = {
    "endotracheal tube": ["An endotracheal tube is in place.", "Endotracheal tube in the trachea."],
    "nasogastric tube": [
        "A nasogastric tube extends into the stomach.",
        "Nasogastric tube in the stomach.",
    ],
    "central venous catheter": [
        "A right central venous catheter ends in the SVC.",
        "Right jugular central venous catheter in the SVC.",
    ],
    "pacemaker": ["A left chest wall pacemaker is in place.", "Left chest pacemaker in place."],
    "sternotomy wires": ["Median sternotomy wires.", "Intact sternotomy wires."],
}
UNCERTAIN: dict[str, list[str]] = {
    "Enlarged Cardiomediastinum": ["{Hedge} widening of the mediastinum."],
    "Cardiomegaly": [
        "The heart size is borderline.",
        "Borderline cardiomegaly.",
        "The heart is borderline enlarged.",
    ],
    "Lung Opacity": ["{Hedge} faint opacity in the {side} {zone}."],
    "Lung Lesion": ["{Hedge} small {kind} in the {side} {zone}."],
    "Edema": ["{Hedge} mild pulmonary edema."],
    "Consolidation": ["{Hedge} consolidation in the {side} {zone}."],
    "Pneumonia": ["{Hedge} early pneumonia in the {side} {zone}."],
    "Atelectasis": ["{Hedge} atelectasis at the {where}."],
    "Pneumothorax": ["{Hedge} small {side} apical pneumothorax."],
    "Pleural Effusion": [
        "{Hedge} small {side} pleural {effusion}.",
        "A small {side} pleural {effusion} cannot be excluded.",
    ],
    "Pleural Other": ["{Hedge} {side} pleural thickening."],
    "Fracture": ["{Hedge} fracture of a {side} rib."],
    "Support Devices": ["{Hedge} catheter overlying the chest."],
}
# negatives: a sentence of their own (anatomy) or a noun phrase for a "No a, b or c." list
NEGATIVE_SENTENCES: dict[str, list[str]] = {
    "Cardiomegaly": [
        "The heart size is normal.",
        "Normal heart size.",
        "The cardiac silhouette is normal.",
    ],
    "Enlarged Cardiomediastinum": ["The mediastinum is not widened.", "No mediastinal widening."],
}
NEGATIVE_NOUNS: dict[str, list[str]] = {
    "Lung Opacity": ["focal airspace opacity", "focal opacity"],
    "Lung Lesion": ["pulmonary nodules", "suspicious nodule or mass"],
    "Edema": ["pulmonary edema", "edema"],
    "Consolidation": ["focal consolidation", "consolidation"],
    "Pneumonia": ["pneumonia"],
    "Atelectasis": ["atelectasis"],
    "Pneumothorax": ["pneumothorax"],
    "Pleural Effusion": ["pleural effusion", "effusion"],
    "Pleural Other": ["pleural thickening"],
    "Fracture": ["acute rib fracture", "displaced fracture"],
    "Support Devices": ["support devices"],
}
NORMAL_REPORT = [
    "No acute cardiopulmonary abnormality.",
    "The chest is normal.",
    "No acute cardiopulmonary process.",
]
# report order: devices, heart and mediastinum, lungs, pleura, bones
ORDER = (
    "Support Devices",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Consolidation",
    "Pneumonia",
    "Lung Opacity",
    "Edema",
    "Atelectasis",
    "Lung Lesion",
    "Pleural Effusion",
    "Pneumothorax",
    "Pleural Other",
    "Fracture",
)


def _fill(template: str, attrs: dict[str, Any], rng: np.random.Generator) -> str:
    side = attrs.get("side", "")
    sev = {
        "small": "small",
        "moderate": "moderate",
        "large": "large",
        "mild": "mildly" if "{sev} enlarged" in template else "mild",
        "severe": "markedly" if "{sev} enlarged" in template else "severe",
    }.get(attrs.get("severity", ""), attrs.get("severity", ""))
    if "{sev} enlarged" in template and attrs.get("severity") == "moderate":
        sev = "moderately"
    zone = str(rng.choice(ZONE_WORDS[attrs["zone"]])) if "zone" in attrs else ""
    where = "lung bases" if side == "bilateral" else f"{side} lung base"
    kind = attrs.get("kind", "nodule")
    size = "" if kind == "mass" else "small "
    values = {
        "side": side,
        "Side": side.capitalize(),
        "sev": sev,
        "Sev": sev.capitalize(),
        "zone": zone,
        "where": where,
        "kind": kind,
        "size": size,
        "Size": size.capitalize(),
        "effusion": "effusions" if side == "bilateral" else "effusion",
        "is_a": "are" if side == "bilateral" else "is a",
        "Hedge": str(rng.choice(HEDGES)),
    }
    text = template.format(**values)
    return text[0].upper() + text[1:]


def _join(nouns: list[str]) -> str:
    return nouns[0] if len(nouns) == 1 else ", ".join(nouns[:-1]) + " or " + nouns[-1]


def write_report(
    findings: list[Finding], negatives: list[str], rng: np.random.Generator
) -> tuple[str, str]:
    """(findings text, impression text) for the drawn findings and the negated observations."""
    by_name = {f.name: f for f in findings}
    sentences = []
    for name in ORDER:
        f = by_name.get(name)
        if f is None:
            continue
        if name == "Support Devices" and f.value == 1.0:
            sentences += [str(rng.choice(DEVICE_WORDS[d])) for d in f.attrs.get("devices", [])]
        else:
            bank = POSITIVE if f.value == 1.0 else UNCERTAIN
            sentences.append(_fill(str(rng.choice(bank[name])), f.attrs, rng))
    positives = list(sentences)
    neg_sent = [
        str(rng.choice(NEGATIVE_SENTENCES[n]))
        for n in ORDER
        if n in negatives and n in NEGATIVE_SENTENCES
    ]
    nouns = [
        str(rng.choice(NEGATIVE_NOUNS[n])) for n in ORDER if n in negatives and n in NEGATIVE_NOUNS
    ]
    # heart/mediastinum statements first, the "no ..." list after the positive findings
    text = neg_sent + sentences
    if nouns:
        text.append(str(rng.choice(["No {}.", "There is no {}."])).format(_join(nouns)))
    if not text:
        text = [str(rng.choice(NORMAL_REPORT))]
    impression = " ".join(positives) if positives else str(rng.choice(NORMAL_REPORT))
    return " ".join(text), impression
